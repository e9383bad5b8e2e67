// Command typedump prints, for values of many kinds of types, the address
// of their runtime type descriptor (the word an interface holds, what
// mallocgc's typ argument points at) and fmt's %T of them. goalloc's tests
// name the same addresses from the executable file and must print the
// same; a type built by reflect at run time is printed as "reflect", which
// the file cannot name.
//
// Output, one record per line:
//
//	anchor <runtime address of main.main's entry>
//	type <hex descriptor address> <%T>
//	reflect <hex descriptor address> <%T>
package main

import (
	"bytes"
	"fmt"
	"reflect"
	"sync"
	"unsafe"
)

type point struct{ X, Y int }

type named int

type pair[K comparable, V any] struct {
	k K
	v V
}

type tree[T any] struct {
	left, right *tree[T]
	v           T
}

type iface interface{ M() }

func typeWord(v any) uintptr {
	return (*[2]uintptr)(unsafe.Pointer(&v))[0]
}

func show(kind string, v any) {
	fmt.Printf("%s %#x %T\n", kind, typeWord(v), v)
}

func main() {
	fmt.Printf("anchor %#x\n", reflect.ValueOf(main).Pointer())
	x := 3
	show("type", point{1, 2})
	show("type", &point{})
	show("type", []point{})
	show("type", map[string]*point{})
	show("type", named(1))
	show("type", &x)
	show("type", pair[int, string]{})
	show("type", &pair[string, []byte]{})
	show("type", &tree[point]{})
	show("type", func() int { return x })
	show("type", [4]byte{})
	show("type", make(chan struct{}))
	show("type", struct {
		A int
		B string
	}{})
	show("type", &bytes.Buffer{})
	show("type", &sync.Map{})
	show("type", new(iface))
	show("type", "s")
	show("type", []string{})
	// Built at run time: not in the executable's type descriptors.
	made := reflect.StructOf([]reflect.StructField{{Name: "Made", Type: reflect.TypeOf(0)}})
	show("reflect", reflect.New(reflect.SliceOf(made)).Interface())
}
