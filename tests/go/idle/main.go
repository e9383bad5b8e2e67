// Command idle is a mostly idle Go process, one of the many a node runs, for
// the agent's scale benchmark (`cargo xtask bench --only scale`).
//
// A goroutine makes -rate small allocations per second (a process whose
// counters move, as a service between requests does); main waits until stdin
// is closed and exits, so a harness that dies takes its idle processes along.
// It prints "ready" once running. Stdlib only; builds with Go 1.19 and later.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

var sink []byte

func main() {
	rate := flag.Int("rate", 10, "allocations per second (0: none)")
	flag.Parse()
	if *rate > 0 {
		go func() {
			tick := time.NewTicker(time.Second / time.Duration(*rate))
			defer tick.Stop()
			for range tick.C {
				sink = make([]byte, 128)
			}
		}()
	}
	fmt.Println("ready")
	var buf [64]byte
	for {
		if _, err := os.Stdin.Read(buf[:]); err != nil {
			return
		}
	}
}
