module github.com/netmutex/netmutex/bench

go 1.26.0

require (
	github.com/netmutex/netmutex v0.0.0
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

replace github.com/netmutex/netmutex => ../
