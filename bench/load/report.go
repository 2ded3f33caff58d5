package load

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Report is a command's whole output, also as JSON. Sweep, Skipped and Plot are the
// comparison's.
type Report struct {
	Machine Machine   `json:"machine"`
	Results []*Result `json:"results"`
	Sweep   []*Result `json:"sweep,omitempty"`
	Skipped []Skip    `json:"skipped,omitempty"`
	Plot    string    `json:"plot,omitempty"`
}

// Skip is a system that could not run, and why.
type Skip struct {
	System string `json:"system"`
	Reason string `json:"reason"`
}

// WriteJSON writes rep indented.
func WriteJSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// PrintMachine prints the machine line.
func PrintMachine(w io.Writer, m Machine) {
	fmt.Fprintf(w, "machine: nproc %d, %s, Linux %s, %s, GOMAXPROCS %d\n", m.NumCPU, m.CPU, m.Kernel, m.Go, m.GOMAXPROCS)
}

// Micros formats v µs.
func Micros(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f s", v/1e6)
	case v >= 10000:
		return fmt.Sprintf("%.1f ms", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.2f ms", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f µs", v)
	default:
		return fmt.Sprintf("%.1f µs", v)
	}
}

// Thousands formats v rounded, with commas.
func Thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
