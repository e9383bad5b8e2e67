// Command demo is a small "service" whose allocations goalloc can watch.
//
// Workers allocate at different rates:
//   - churner: a fast small-object churner (short-lived buffers and structs),
//   - leaker: a slow leak that keeps growing a global slice of 4 KiB buffers,
//   - requests: a request simulator that spawns a short-lived goroutine per request.
//
// Every 5 s it prints what it did, with the allocation count from runtime.MemStats,
// so the numbers can be compared with goalloc's. It runs until killed, or for
// -duration. Stdlib only; builds with Go 1.19 and later.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

type record struct {
	id    int64
	name  string
	tags  []string
	next  *record
	score float64
}

type request struct {
	id      int64
	path    string
	headers map[string]string
	body    []byte
}

var (
	leaked    [][]byte // grows forever (reset at maxLeaked buffers to bound memory)
	sink      interface{}
	churned   int64 // atomic
	requests  int64 // atomic
	leakCount int64 // atomic
	resets    int64 // atomic
)

const maxLeaked = 65536 // 256 MiB of 4 KiB buffers

// churner allocates batches of short-lived small objects, about rate objects/s.
func churner(rate int) {
	const batch = 1000
	tick := time.NewTicker(time.Second * batch / time.Duration(rate))
	defer tick.Stop()
	var prev *record
	for range tick.C {
		for i := 0; i < batch; i += 2 {
			r := &record{id: int64(i), score: float64(i) * 0.5, next: prev}
			r.tags = make([]string, 1+i%4)
			if i%64 == 0 {
				prev = nil // keep chains short: everything becomes garbage quickly
			} else {
				prev = r
			}
		}
		sink = prev
		atomic.AddInt64(&churned, batch)
	}
}

// leaker keeps rate 4 KiB buffers per second alive in a global slice.
func leaker(rate int) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for range tick.C {
		if len(leaked) >= maxLeaked {
			leaked = nil
			atomic.AddInt64(&resets, 1)
		}
		buf := make([]byte, 4096)
		buf[0] = byte(len(leaked))
		leaked = append(leaked, buf)
		atomic.AddInt64(&leakCount, 1)
	}
}

func handle(id int64) {
	req := &request{
		id:      id,
		path:    "/api/items/" + strconv.FormatInt(id%1000, 10),
		headers: map[string]string{"accept": "application/json", "x-request-id": strconv.FormatInt(id, 16)},
		body:    make([]byte, 256+int(id%512)),
	}
	resp := make([]byte, 0, 64)
	for i := 0; i < 8; i++ {
		resp = append(resp, `{"item":`...)
		resp = strconv.AppendInt(resp, req.id+int64(i), 10)
		resp = append(resp, '}')
	}
	time.Sleep(time.Duration(1+id%20) * time.Millisecond)
	sink = resp
	atomic.AddInt64(&requests, 1)
}

// requester starts one short-lived goroutine per request, rate requests/s.
func requester(rate int) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var id int64
	for range tick.C {
		id++
		go handle(id)
	}
}

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until killed)")
	churnRate := flag.Int("churn", 200000, "churner: small objects per second")
	leakRate := flag.Int("leak", 20, "leaker: 4 KiB buffers per second kept alive")
	reqRate := flag.Int("requests", 200, "request simulator: requests (goroutines) per second")
	flag.Parse()
	if *churnRate < 1000 || *leakRate < 1 || *reqRate < 1 {
		fmt.Fprintln(os.Stderr, "demo: -churn must be >= 1000, -leak and -requests >= 1")
		os.Exit(2)
	}

	fmt.Printf("demo: pid=%d go=%s churn=%d/s leak=%d x 4KiB/s requests=%d/s\n",
		os.Getpid(), runtime.Version(), *churnRate, *leakRate, *reqRate)
	go churner(*churnRate)
	go leaker(*leakRate)
	go requester(*reqRate)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	start := time.Now()
	lastMallocs, lastTime := ms.Mallocs, start
	report := time.NewTicker(5 * time.Second)
	defer report.Stop()
	var deadline <-chan time.Time
	if *duration > 0 {
		deadline = time.After(*duration)
	}
	for {
		select {
		case now := <-report.C:
			runtime.ReadMemStats(&ms)
			rate := float64(ms.Mallocs-lastMallocs) / now.Sub(lastTime).Seconds()
			fmt.Printf("demo: t=%s mallocs=%d (%.0f/s) frees=%d heap=%.1fMiB goroutines=%d churned=%d leaked=%d(resets %d) requests=%d\n",
				now.Sub(start).Round(time.Second), ms.Mallocs, rate, ms.Frees,
				float64(ms.HeapAlloc)/(1<<20), runtime.NumGoroutine(),
				atomic.LoadInt64(&churned), atomic.LoadInt64(&leakCount),
				atomic.LoadInt64(&resets), atomic.LoadInt64(&requests))
			lastMallocs, lastTime = ms.Mallocs, now
		case <-deadline:
			fmt.Println("demo: done")
			return
		}
	}
}
