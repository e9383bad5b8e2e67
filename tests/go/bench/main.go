// Command bench measures the cost of one heap allocation in a hot loop.
//
// It makes -n allocations, each escaping to a global sink, and prints exactly:
//
//	ns_per_alloc=<float> allocs=<n>
//	mallocs=<runtime.MemStats.Mallocs delta over the loop>
//	mallocs_total=<runtime.MemStats.Mallocs since the process started>
//
// A probe counting the whole process sees mallocs_total plus the few allocations
// made by the printing after the final ReadMemStats.
//
// -kind=make (default) allocates make([]byte, 64); -kind=new allocates a small
// pointerful struct with new (Go 1.27 calls its size-specialized allocators
// directly for that). -hold keeps the process alive after printing until stdin
// is closed, so a watcher that discovers processes periodically sees it.
// -wait prints "waiting" and reads one line of stdin before anything else, so a
// probe attached after the process started can be in place before the loop.
// Stdlib only; builds with Go 1.19 and later.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
)

type node struct {
	next *node
	v    [3]int64
}

var (
	sinkBytes []byte
	sinkNode  *node
	keep      *node
	holdBuf   [64]byte
)

func loopMake(n int) {
	for i := 0; i < n; i++ {
		b := make([]byte, 64)
		b[0] = byte(i)
		sinkBytes = b
	}
}

func loopNew(n int) {
	for i := 0; i < n; i++ {
		p := new(node)
		p.next = keep
		p.v[0] = int64(i)
		sinkNode = p
	}
}

func main() {
	n := flag.Int("n", 2000000, "number of allocations")
	kind := flag.String("kind", "make", "make: make([]byte, 64); new: new(struct{ next *node; v [3]int64 })")
	hold := flag.Bool("hold", false, "after printing, wait until stdin is closed")
	wait := flag.Bool("wait", false, "print \"waiting\" and read one line of stdin before starting")
	flag.Parse()
	var loop func(int)
	switch *kind {
	case "make":
		loop = loopMake
	case "new":
		loop = loopNew
	default:
		fmt.Fprintf(os.Stderr, "bench: unknown -kind=%q (make, new)\n", *kind)
		os.Exit(2)
	}
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "bench: -n must be >= 1")
		os.Exit(2)
	}

	if *wait {
		fmt.Println("waiting")
		var b [1]byte
		for {
			// Byte by byte up to the newline: nothing of a later EOF is consumed.
			if _, err := os.Stdin.Read(b[:]); err != nil || b[0] == '\n' {
				break
			}
		}
	}

	loop(*n/10 + 1) // warm up: heap grown, GC pacing settled
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	loop(*n)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)

	fmt.Printf("ns_per_alloc=%.2f allocs=%d\n", float64(elapsed.Nanoseconds())/float64(*n), *n)
	fmt.Printf("mallocs=%d\n", after.Mallocs-before.Mallocs)
	fmt.Printf("mallocs_total=%d\n", after.Mallocs)
	if *hold {
		for {
			if _, err := os.Stdin.Read(holdBuf[:]); err != nil {
				break
			}
		}
	}
}
