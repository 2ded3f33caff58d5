//go:build race

package tests

// raceEnabled scales the long runs down under the race detector, which slows the client
// several times; the full-size runs happen in the plain `go test` pass.
const raceEnabled = true
