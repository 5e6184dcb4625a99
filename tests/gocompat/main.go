// gocompat: compresses and decompresses with Go's standard library, exactly as etcdbrctl does
// (compress/gzip, compress/zlib, compress/lzw LSB 8), so that tests can check that objects
// written by etcdbr are readable by etcdbrctl and the other way round.
//
// usage: gocompat compress|decompress gzip|zlib|lzw IN OUT
package main

import (
	"compress/gzip"
	"compress/lzw"
	"compress/zlib"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: gocompat compress|decompress gzip|zlib|lzw IN OUT")
		os.Exit(2)
	}
	in, err := os.Open(os.Args[3])
	check(err)
	out, err := os.Create(os.Args[4])
	check(err)
	switch os.Args[1] {
	case "compress":
		var w io.WriteCloser
		switch os.Args[2] {
		case "gzip":
			w = gzip.NewWriter(out)
		case "zlib":
			w = zlib.NewWriter(out)
		case "lzw":
			w = lzw.NewWriter(out, lzw.LSB, 8)
		}
		_, err = io.Copy(w, in)
		check(err)
		check(w.Close())
	case "decompress":
		var r io.Reader
		switch os.Args[2] {
		case "gzip":
			r, err = gzip.NewReader(in)
		case "zlib":
			r, err = zlib.NewReader(in)
		case "lzw":
			r = lzw.NewReader(in, lzw.LSB, 8)
		}
		check(err)
		_, err = io.Copy(out, r)
		check(err)
	}
	check(out.Close())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gocompat:", err)
		os.Exit(1)
	}
}
