module github.com/netmutex/netmutex/bench

go 1.26.0

require github.com/netmutex/netmutex v0.0.0

require (
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

replace github.com/netmutex/netmutex => ../
