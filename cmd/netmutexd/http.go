package main

import "github.com/netmutex/netmutex/server"

// setHTTPAddr sets the address the server serves HTTP on. Until server.Config has
// HTTPAddr, -http is checked but not served.
func setHTTPAddr(cfg *server.Config, addr string) {}

// httpAddr is the address the server serves HTTP on, "" if none.
func httpAddr(srv *server.Server) string { return "" }
