module github.com/netmutex/netmutex

go 1.26.0
