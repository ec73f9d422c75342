// Command s3server is the local S3 of bootstrap/local/services.sh: gofakes3
// (MIT) with its bolt backend, so buckets and objects live in one file on disk
// and survive a restart or a kill -9 (bolt commits each write with an fsync).
//
// It only listens on 127.0.0.1 and accepts any credentials, as a local stand-in
// must. Usage: s3server -addr 127.0.0.1:9000 -db .cache/aws-local/s3/objects.db
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "address to listen on (127.0.0.1 only)")
	db := flag.String("db", "objects.db", "bolt file that holds the buckets and objects")
	flag.Parse()

	if host, _, err := net.SplitHostPort(*addr); err != nil || host != "127.0.0.1" {
		log.Fatalf("s3server: -addr must be 127.0.0.1:<port>, got %q", *addr)
	}
	store, err := s3bolt.NewFile(*db)
	if err != nil {
		log.Fatalf("s3server: cannot open %s: %v", *db, err)
	}
	faker := gofakes3.New(&copyingBackend{store: store},
		gofakes3.WithLogger(gofakes3.GlobalLog(gofakes3.LogErr, gofakes3.LogWarn)),
		gofakes3.WithIntegrityCheck(true),
	)
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("s3server: %v", err)
	}
	log.Printf("s3server: serving %s on http://%s", *db, *addr)
	log.Fatal(http.Serve(listener, partialReadsWithoutChecksums(faker.Server())))
}

// partialReadsWithoutChecksums drops the stored whole-object checksums
// (x-amz-checksum-*) from the answer to a ranged GET. gofakes3 keeps the
// checksum headers a client sent with its PUT as metadata and returns them on
// every read; S3 does not for a byte range, and a client that checks them
// (boto3 does) would reject every partial read.
func partialReadsWithoutChecksums(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			w = checksumFreeWriter{w}
		}
		next.ServeHTTP(w, r)
	})
}

type checksumFreeWriter struct{ http.ResponseWriter }

func (w checksumFreeWriter) WriteHeader(status int) {
	for name := range w.Header() {
		if strings.HasPrefix(strings.ToLower(name), "x-amz-checksum-") {
			w.Header().Del(name)
		}
	}
	w.ResponseWriter.WriteHeader(status)
}
