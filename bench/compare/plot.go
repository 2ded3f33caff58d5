package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/netmutex/netmutex/bench/load"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// One colour and dash per system, the same in both panels.
var systemStyle = map[string]struct {
	c    color.RGBA
	dash []vg.Length
}{
	"netmutex":      {color.RGBA{0xd6, 0x27, 0x28, 0xff}, nil},
	"redis-rueidis": {color.RGBA{0x1f, 0x77, 0xb4, 0xff}, nil},
	"redis-goredis": {color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, []vg.Length{vg.Points(6), vg.Points(3)}},
	"etcd":          {color.RGBA{0x94, 0x67, 0xbd, 0xff}, []vg.Length{vg.Points(2), vg.Points(2)}},
}

func styleLine(l *plotter.Line, name string) {
	st, ok := systemStyle[name]
	if !ok {
		st.c = color.RGBA{0x55, 0x55, 0x55, 0xff}
	}
	l.Color = st.c
	l.Width = vg.Points(2)
	l.Dashes = st.dash
}

// writePlot draws two panels into file (.png or .svg): pairs/s against goroutines for
// every system of the sweep, and the distribution of pair latency at latencyAt()
// goroutines.
func writePlot(file string, rep *load.Report) error {
	if len(rep.Sweep) == 0 {
		return fmt.Errorf("no sweep results to plot")
	}
	var order []string
	byName := map[string][]*load.Result{}
	for _, r := range rep.Sweep {
		if byName[r.System] == nil {
			order = append(order, r.System)
		}
		byName[r.System] = append(byName[r.System], r)
	}

	mode := "lock+unlock pairs/s"
	if rep.Sweep[0].Contended {
		mode = "acquisitions/s (one key)"
	}
	m := rep.Machine
	machineLine := fmt.Sprintf("%s, nproc %d, Linux %s, %s", m.CPU, m.NumCPU, m.Kernel, m.Go)

	tp := plot.New()
	tp.Title.Text = mode + " against goroutines\n" + machineLine
	tp.X.Label.Text = "goroutines"
	tp.Y.Label.Text = mode + " (log scale)"
	tp.X.Scale = plot.LogScale{}
	tp.X.Tick.Marker = plot.ConstantTicks(goroutineTicks())
	tp.Y.Scale = plot.LogScale{}
	tp.Y.Tick.Marker = logThousandsTicks{}
	tp.Add(plotter.NewGrid())
	tp.Legend.Top = true
	tp.Legend.Left = true

	lp := plot.New()
	lp.Title.Text = fmt.Sprintf("distribution of pair latency at %d goroutines (further left is faster)", latencyAt())
	lp.X.Label.Text = "latency of a lock+unlock pair (µs, log scale)"
	lp.Y.Label.Text = "fraction of pairs at most that long"
	lp.X.Scale = plot.LogScale{}
	lp.X.Tick.Marker = plot.LogTicks{Prec: -1}
	lp.Y.Min, lp.Y.Max = 0, 1
	lp.Add(plotter.NewGrid())
	lp.Legend.Top = false
	lp.Legend.Left = false

	ymin, ymax := math.Inf(1), 0.0
	haveLatency := false
	for _, name := range order {
		rs := byName[name]
		pts := make(plotter.XYs, 0, len(rs))
		for _, r := range rs {
			y := max(r.PairsPerSec, 1) // a log axis has no 0
			pts = append(pts, plotter.XY{X: float64(r.Goroutines), Y: y})
			ymin, ymax = min(ymin, y), max(ymax, y)
		}
		line, marks, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		styleLine(line, name)
		marks.Color = line.Color
		marks.Shape = draw.CircleGlyph{}
		tp.Add(line, marks)
		tp.Legend.Add(name, line, marks)

		for _, r := range rs {
			if r.Goroutines != latencyAt() || r.PairHist == nil || r.PairHist.Count() == 0 {
				continue
			}
			xs, fs := r.PairHist.CDF()
			cdf := make(plotter.XYs, 0, len(xs))
			for i := range xs {
				us := float64(xs[i]) / 1e3
				if us <= 0 {
					continue
				}
				cdf = append(cdf, plotter.XY{X: us, Y: fs[i]})
			}
			if len(cdf) == 0 {
				continue
			}
			l, err := plotter.NewLine(cdf)
			if err != nil {
				return err
			}
			styleLine(l, name)
			lp.Add(l)
			haveLatency = true
			lp.Legend.Add(fmt.Sprintf("%s  p50 %s  p99 %s", name, load.Micros(r.Pair.P50), load.Micros(r.Pair.P99)), l)
		}
	}
	if !haveLatency { // an empty log axis has no range of its own
		lp.X.Min, lp.X.Max = 1, 1e4
	}
	// Room above for the legend, and whole powers of ten at both ends.
	tp.Y.Min = math.Pow(10, math.Floor(math.Log10(ymin)))
	tp.Y.Max = math.Pow(10, math.Ceil(math.Log10(ymax*2)))

	const wIn, hIn = 9, 11
	w, h := wIn*vg.Inch, hIn*vg.Inch
	var c vg.CanvasWriterTo
	switch strings.ToLower(filepath.Ext(file)) {
	case ".svg":
		c = vgsvg.New(w, h)
	default:
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))}
	}
	dc := draw.New(c.(vg.CanvasSizer))
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Inch / 4, PadY: vg.Inch / 3,
		PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 4}
	plots := [][]*plot.Plot{{tp}, {lp}}
	cs := plot.Align(plots, tiles, dc)
	tp.Draw(cs[0][0])
	lp.Draw(cs[1][0])

	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func goroutineTicks() []plot.Tick {
	ts := make([]plot.Tick, len(sweepGoroutines))
	for i, n := range sweepGoroutines {
		ts[i] = plot.Tick{Value: float64(n), Label: fmt.Sprint(n)}
	}
	return ts
}

// logThousandsTicks labels a log axis at 1, 2 and 5 times each power of ten, with
// comma-grouped numbers.
type logThousandsTicks struct{}

func (logThousandsTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for p := math.Pow(10, math.Floor(math.Log10(lo))); p <= hi; p *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := p * m; v >= lo && v <= hi {
				ts = append(ts, plot.Tick{Value: v, Label: load.Thousands(v)})
			}
		}
		for m := 2.0; m < 10; m++ {
			if v := p * m; v >= lo && v <= hi && m != 2 && m != 5 {
				ts = append(ts, plot.Tick{Value: v}) // minor
			}
		}
	}
	return ts
}
