// Cluster flags: -name, -initial-cluster and -listen-raft into server.ClusterConfig; and
// -cpuprofile.

package main

import (
	"flag"
	"os"
	"runtime/pprof"

	"github.com/netmutex/netmutex/server"
)

// clusterFlags makes cfg a cluster node's when -initial-cluster is set. -listen then
// defaults to this node's CLIENT_UDP_ADDRESS rather than the single server's default.
func clusterFlags(fs *flag.FlagSet, f *flags, cfg *server.Config) error {
	if f.initialCluster == "" {
		if f.name != "" || f.listenRaft.v != "" {
			return usageErr("-name and -listen-raft need -initial-cluster")
		}
		return nil
	}
	members, err := server.ParseInitialCluster(f.initialCluster)
	if err != nil {
		return usageErr("-initial-cluster: %v", err)
	}
	for _, m := range members {
		if err := checkHostPort(m.ClientAddr); err != nil {
			return usageErr("-initial-cluster: %s's client address %q %v", m.Name, m.ClientAddr, err)
		}
		if err := checkHostPort(m.RaftAddr); err != nil {
			return usageErr("-initial-cluster: %s's raft address %q %v", m.Name, m.RaftAddr, err)
		}
	}
	cc := &server.ClusterConfig{Name: f.name, Members: members, RaftBind: f.listenRaft.v}
	if err := cc.Validate(); err != nil {
		return usageErr("-name %q, -initial-cluster: %v", f.name, err)
	}
	listenSet := false
	fs.Visit(func(fl *flag.Flag) { listenSet = listenSet || fl.Name == "listen" })
	if !listenSet {
		cfg.ListenAddr = "" // this member's CLIENT_UDP_ADDRESS
	}
	cfg.Cluster = cc
	return nil
}

// startCPUProfile profiles the process into path until the returned stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
