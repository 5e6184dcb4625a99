// gocompat: compresses and decompresses with Go's standard library, exactly as etcdbrctl does
// (compress/gzip, compress/zlib, compress/lzw LSB 8), so that tests can check that objects
// written by etcdbr are readable by etcdbrctl and the other way round.
//
// usage: gocompat compress|decompress gzip|zlib|lzw IN OUT
//        gocompat delta-reencode - IN OUT
package main

import (
	"bytes"
	"compress/gzip"
	"compress/lzw"
	"compress/zlib"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// The JSON shape of etcd's mvccpb types (tags as in the generated kv.pb.go) and of etcdbrctl's
// delta element.
type KeyValue struct {
	Key            []byte `json:"key,omitempty"`
	CreateRevision int64  `json:"create_revision,omitempty"`
	ModRevision    int64  `json:"mod_revision,omitempty"`
	Version        int64  `json:"version,omitempty"`
	Value          []byte `json:"value,omitempty"`
	Lease          int64  `json:"lease,omitempty"`
}

type Event struct {
	Type   int32     `json:"type,omitempty"`
	Kv     *KeyValue `json:"kv,omitempty"`
	PrevKv *KeyValue `json:"prev_kv,omitempty"`
}

type element struct {
	EtcdEvent *Event    `json:"etcdEvent"`
	Time      time.Time `json:"time"`
}

// deltaReencode reads a delta payload as etcdbrctl does (sha256 trailer, JSON array), and writes
// it again as etcdbrctl would have written it.
func deltaReencode(in []byte, out io.Writer) error {
	if len(in) <= sha256.Size {
		return fmt.Errorf("delta too short")
	}
	data, sum := in[:len(in)-sha256.Size], in[len(in)-sha256.Size:]
	h := sha256.Sum256(data)
	if !bytes.Equal(h[:], sum) {
		return fmt.Errorf("sha256 mismatch")
	}
	var events []element
	if err := json.Unmarshal(data, &events); err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, e := range events {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	h = sha256.Sum256(buf.Bytes())
	buf.Write(h[:])
	_, err := out.Write(buf.Bytes())
	return err
}

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
	case "delta-reencode":
		data, err := io.ReadAll(in)
		check(err)
		check(deltaReencode(data, out))
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
