// Command layoutdump prints, from the DWARF of a Go executable, the byte
// offsets of the runtime struct fields goalloc reads from a live process's
// memory, and the sizes of those structs: "runtime.T.field <offset>" and
// "runtime.T <size>" per line (nested fields as "runtime.T.a.b"). goalloc's
// tests compare its per-version layout table with this, so the table can
// never drift from what the toolchain really built.
//
// Usage: layoutdump BINARY TYPE[.FIELD[.FIELD...]]...
// A type or field that is not in the binary is printed as "<name> missing"
// (the caller decides whether that is an error); a binary without DWARF exits 1.
package main

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: layoutdump BINARY TYPE[.FIELD...]...")
		os.Exit(2)
	}
	f, err := elf.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, err := f.DWARF()
	if err != nil {
		fmt.Fprintln(os.Stderr, "no DWARF:", err)
		os.Exit(1)
	}
	// Every named struct type of the binary, by name.
	structs := map[string]*dwarf.StructType{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if !strings.HasPrefix(name, "runtime.") {
			continue
		}
		if _, seen := structs[name]; seen {
			continue
		}
		t, err := d.Type(e.Offset)
		if err != nil {
			continue
		}
		if st, ok := t.(*dwarf.StructType); ok {
			structs[name] = st
		}
	}
	for _, q := range os.Args[2:] {
		// "runtime.T.a.b": the type name is "runtime.T".
		parts := strings.Split(q, ".")
		if len(parts) < 2 {
			fmt.Printf("%s missing\n", q)
			continue
		}
		st := structs[parts[0]+"."+parts[1]]
		if st == nil {
			fmt.Printf("%s missing\n", q)
			continue
		}
		if len(parts) == 2 {
			fmt.Printf("%s %d\n", q, st.ByteSize)
			continue
		}
		off, ok := fieldOffset(st, parts[2:])
		if !ok {
			fmt.Printf("%s missing\n", q)
			continue
		}
		fmt.Printf("%s %d\n", q, off)
	}
}

// fieldOffset follows a path of field names through nested structs.
func fieldOffset(st *dwarf.StructType, path []string) (int64, bool) {
	var off int64
	for i, name := range path {
		var found *dwarf.StructField
		for _, fld := range st.Field {
			if fld.Name == name {
				found = fld
				break
			}
		}
		if found == nil {
			return 0, false
		}
		off += found.ByteOffset
		if i == len(path)-1 {
			return off, true
		}
		t := found.Type
		for {
			if td, ok := t.(*dwarf.TypedefType); ok {
				t = td.Type
				continue
			}
			break
		}
		next, ok := t.(*dwarf.StructType)
		if !ok {
			return 0, false
		}
		st = next
	}
	return off, true
}
