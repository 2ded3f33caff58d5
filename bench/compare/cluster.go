// -cluster N: netmutex as a cluster of N netmutexd processes replicated with Raft, then
// one netmutexd process, then the peers of -vs (etcd alone unless -vs is given), same
// job, one table.

package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/netmutex/netmutex/bench/load"
)

func registerCluster(fs *flag.FlagSet, o *options) {
	fs.IntVar(&o.cluster, "cluster", 0, "compare a cluster of this many netmutexd processes replicated with Raft (fsync on) and one netmutexd process with -vs (etcd unless -vs is given), instead of the embedded server; 0: the embedded server")
}

// checkCluster validates -cluster after Parse and makes etcd, the peer that also
// replicates a log, -cluster's default -vs.
func checkCluster(fs *flag.FlagSet, o *options, vs *string) error {
	if o.cluster == 0 {
		return nil
	}
	if o.cluster < 2 {
		return errors.New("-cluster must be 0 (none) or at least 2 nodes (3 survives the loss of one)")
	}
	if o.Addr != "" {
		return errors.New("-cluster starts its own servers: drop -addr")
	}
	vsSet := false
	fs.Visit(func(f *flag.Flag) { vsSet = vsSet || f.Name == "vs" })
	if !vsSet {
		*vs = "etcd"
	}
	return nil
}

// clusterName is the system name of a cluster of n nodes (load.Netmutexd's).
func clusterName(n int) string { return fmt.Sprintf("netmutex-raft%d", n) }

// systems are the systems of this invocation, in order: the first is the reference.
func (o *options) systems() []string {
	if o.cluster > 0 {
		return append([]string{clusterName(o.cluster), "netmutexd"}, o.vs...)
	}
	return append([]string{"netmutex"}, o.vs...)
}

// openNetmutexd builds netmutexd and starts it as n processes. The binary is removed
// once they run.
func openNetmutexd(o *options, n int) (load.System, error) {
	dir, err := os.MkdirTemp("", "netmutex-compare-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin, err := load.BuildNetmutexd(dir)
	if err != nil {
		return nil, err
	}
	sys, err := load.StartNetmutexd(&o.Options, bin, n)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return sys, nil
}
