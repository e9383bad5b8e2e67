// Command pcdump records its own call stacks with runtime.Callers at call
// sites inside inlined functions, a generic function, a closure and a
// method value, and prints each stack's pcs and the frames Go's own
// runtime.CallersFrames makes of them. goalloc's symbolizer tests expand the
// same pcs from the executable file and must find the same frames.
//
// Output, one record per line:
//
//	anchor <runtime address of main.main's entry>
//	stack <name>
//	pc <hex return address>
//	frame <function>|<file>|<line>
//	type <hex type descriptor address> <%T>
//
// (The type line gives goalloc's pprof test a real type address.)
package main

import (
	"fmt"
	"os"
	"reflect"
	"runtime"
	"unsafe"
)

var out = os.Stdout

//go:noinline
func record() []uintptr {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(1, pcs)
	return pcs[:n]
}

// inner and middle are small enough to be inlined into outer.
func inner() []uintptr { return record() }

func middle() []uintptr { return inner() }

//go:noinline
func outer() []uintptr { return middle() }

type box[T any] struct{ v T }

//go:noinline
func generic[T any](v T) []uintptr {
	b := box[T]{v}
	_ = b
	return inner()
}

type counter struct{ n int }

//go:noinline
func (c *counter) method() []uintptr {
	c.n++
	return middle()
}

func dump(name string, pcs []uintptr) {
	fmt.Fprintf(out, "stack %s\n", name)
	for _, pc := range pcs {
		fmt.Fprintf(out, "pc %#x\n", pc)
	}
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		fmt.Fprintf(out, "frame %s|%s|%d\n", f.Function, f.File, f.Line)
		if !more {
			break
		}
	}
}

func main() {
	fmt.Fprintf(out, "anchor %#x\n", reflect.ValueOf(main).Pointer())
	dump("inlined", outer())
	dump("generic", generic[string]("x"))
	dump("generic-int", generic[int](1))
	closure := func() []uintptr { return middle() }
	dump("closure", closure())
	c := &counter{}
	mv := c.method
	dump("method-value", mv())
	var nested []uintptr
	func() {
		defer func() { nested = inner() }()
	}()
	dump("deferred", nested)
	var v any = c
	fmt.Fprintf(out, "type %#x %T\n", (*[2]uintptr)(unsafe.Pointer(&v))[0], v)
}
