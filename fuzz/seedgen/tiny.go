// Command tiny is the smallest useful Go program for fuzz seeds: it allocates
// on the heap and starts a goroutine, so the runtime functions goalloc probes
// (mallocgc, the size-specialized allocators, newproc1, gdestroy/goexit0) are
// all linked in. Built by ../gen-seeds.sh; stdlib only, no go.mod.
package main

var sink []*[3]int

func main() {
	done := make(chan int)
	go func() {
		for i := 0; i < 10; i++ {
			sink = append(sink, &[3]int{i, i, i})
		}
		done <- len(sink)
	}()
	println(<-done)
}
