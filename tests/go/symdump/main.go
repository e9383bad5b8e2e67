// Command symdump prints the functions of a Go executable as Go's own
// debug/gosym reads them from .gopclntab: "name entry end" per line. goalloc's
// tests compare its pclntab reader with this independent one on binaries that
// have no symbol table (stripped third-party programs).
package main

import (
	"debug/elf"
	"debug/gosym"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: symdump BINARY")
		os.Exit(2)
	}
	f, err := elf.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sec := f.Section(".gopclntab")
	if sec == nil {
		sec = f.Section(".data.rel.ro.gopclntab")
	}
	if sec == nil {
		fmt.Fprintln(os.Stderr, "no .gopclntab section")
		os.Exit(1)
	}
	data, err := sec.Data()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	text := f.Section(".text")
	if text == nil {
		fmt.Fprintln(os.Stderr, "no .text section")
		os.Exit(1)
	}
	// debug/gosym takes the text start from its caller. .text is right only
	// for internally linked binaries: external linking puts the runtime text
	// 0x100 later. Go 1.18-1.25 record the true start in the header (after
	// magic, pad, minLC, ptrSize and two counts); 1.26+ write 0 there, and
	// then the runtime.text symbol (if not stripped) is the source.
	textStart := text.Addr
	magic := f.ByteOrder.Uint32(data)
	if magic == 0xfffffff0 || magic == 0xfffffff1 {
		ptr := int(data[7])
		off := 8 + 2*ptr
		var hdr uint64
		if ptr == 8 {
			hdr = f.ByteOrder.Uint64(data[off:])
		} else {
			hdr = uint64(f.ByteOrder.Uint32(data[off:]))
		}
		if hdr != 0 {
			textStart = hdr
		} else if syms, err := f.Symbols(); err == nil {
			for _, s := range syms {
				if s.Name == "runtime.text" {
					textStart = s.Value
				}
			}
		}
	}
	table, err := gosym.NewTable(nil, gosym.NewLineTable(data, textStart))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if len(table.Funcs) == 0 {
		// An older debug/gosym reads a newer table format as empty.
		fmt.Fprintln(os.Stderr, "debug/gosym found no functions: build symdump with a Go at least as new as the binary")
		os.Exit(1)
	}
	for _, fn := range table.Funcs {
		fmt.Printf("%s %d %d\n", fn.Name, fn.Entry, fn.End)
	}
}
