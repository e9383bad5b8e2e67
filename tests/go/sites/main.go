// sites: allocates forever at four call sites in fixed proportions of
// requested bytes, so that an allocation profile can be checked against a
// known truth. It prints "ready <pid>", then one line per site:
//
//	site <function as pprof names it> <type label> <share of requested bytes>
//
// and "loop" when it starts allocating (the line ending the description).
// With -reexec D it replaces itself by the same executable (execve, same
// pid) after D of allocating, once: it prints "exec" just before.
// The type label is the Go type name of the allocated object, or "untyped"
// when the allocator gets no type (a string copied to a []byte). Every
// object is exactly the size of its size class (or whole pages), without a
// malloc header, so requested bytes and Go's own (allocated) bytes agree.
package main

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// record has pointers and is a large object (5 pages of 8 KiB): new(record)
// goes through runtime.newobject and mallocgc (mallocgcLarge from Go 1.24).
type record struct {
	next *record
	note *small
	vals [5118]int64
}

// pair has pointers and is 48 bytes: on Go 1.27 new(pair) calls
// mallocgcSmallScanNoHeaderSC5 directly from the (inlining) caller.
type pair struct {
	r *record
	s *small
	n [4]int64
}

// small is pointer-free and 64 bytes (not tiny): on Go 1.27 new(small)
// calls mallocgcSmallNoScanSC6 directly.
type small struct {
	v [8]int64
}

// Allocations of each site per iteration.
const (
	records = 1   // 1 x 40960 B = 40960 B (40%)
	pairs   = 640 // 640 x 48 B = 30720 B (30%)
	buffers = 5   // 5 x 4096 B = 20480 B (20%)
	smalls  = 160 // 160 x 64 B = 10240 B (10%)
)

// text is converted to a []byte by bytesSite: runtime.stringtoslicebyte
// allocates through rawbyteslice with typ == nil (an untyped allocation),
// rounded up to a size class, which 4096 is. (make([]byte, n) would not do:
// makeslice passes the element type, uint8.)
var text = strings.Repeat("x", 4096)

// Keeps the last object of each site reachable, so that all escape.
var sink struct {
	r *record
	p *pair
	b []byte
	s *small
}

//go:noinline
func recordSite(next *record) *record {
	return &record{next: next}
}

// inlinedSite is small enough to be inlined into iterate by every Go
// version: its allocation belongs to an inlined frame.
func inlinedSite(r *record, s *small) *pair {
	return &pair{r: r, s: s}
}

//go:noinline
func bytesSite() []byte {
	return []byte(text)
}

//go:noinline
func smallSite() *small {
	return new(small)
}

//go:noinline
func iterate() {
	for i := 0; i < records; i++ {
		sink.r = recordSite(sink.r)
		// Breaks the chain, so that the live heap stays small.
		sink.r.next = nil
	}
	for i := 0; i < pairs; i++ {
		sink.p = inlinedSite(sink.r, sink.s)
	}
	for i := 0; i < buffers; i++ {
		sink.b = bytesSite()
	}
	for i := 0; i < smalls; i++ {
		sink.s = smallSite()
	}
}

func funcName(f interface{}) string {
	return runtime.FuncForPC(reflect.ValueOf(f).Pointer()).Name()
}

func main() {
	reexec := flag.Duration("reexec", 0, "exec the same executable again after this long (once)")
	flag.Parse()
	fmt.Printf("ready %d\n", os.Getpid())
	sites := []struct {
		fn    interface{}
		typ   string
		bytes int
	}{
		{recordSite, fmt.Sprintf("%T", record{}), records * int(unsafe.Sizeof(record{}))},
		{inlinedSite, fmt.Sprintf("%T", pair{}), pairs * int(unsafe.Sizeof(pair{}))},
		{bytesSite, "untyped", buffers * len(text)},
		{smallSite, fmt.Sprintf("%T", small{}), smalls * int(unsafe.Sizeof(small{}))},
	}
	total := 0
	for _, s := range sites {
		total += s.bytes
	}
	for _, s := range sites {
		fmt.Printf("site %s %s %.4f\n", funcName(s.fn), s.typ, float64(s.bytes)/float64(total))
	}
	fmt.Println("loop")
	// One iteration (100 KiB, 806 allocations) per 10 ms: at most
	// ~10 MiB/s and ~80k allocations/s, a fraction of one CPU.
	start := time.Now()
	for {
		iterate()
		time.Sleep(10 * time.Millisecond)
		if *reexec > 0 && time.Since(start) >= *reexec {
			self, err := os.Executable()
			if err != nil {
				fmt.Fprintln(os.Stderr, "sites:", err)
				os.Exit(1)
			}
			fmt.Println("exec")
			// The new image runs without -reexec: once.
			err = syscall.Exec(self, []string{os.Args[0]}, os.Environ())
			fmt.Fprintln(os.Stderr, "sites: exec:", err)
			os.Exit(1)
		}
	}
}
