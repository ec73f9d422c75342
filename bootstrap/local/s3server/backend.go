package main

import (
	"bytes"
	"io"
	"sync"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
)

// copyingBackend makes gofakes3's bolt backend safe under concurrent requests.
//
// s3bolt decodes an object straight from bolt's memory map and hands out its
// body and hash after the read transaction has closed. A write that grows the
// file remaps it, and a write after that may reuse the freed pages: a read still
// streaming such a body then returns other bytes or faults (a CopyObject alone
// is enough to crash the server). Here every read copies what it returns while
// no write can run, and every write waits for those copies.
type copyingBackend struct {
	mu    sync.RWMutex
	store *s3bolt.Backend
}

var _ gofakes3.Backend = (*copyingBackend)(nil)

func (b *copyingBackend) GetObject(bucket, key string, rng *gofakes3.ObjectRangeRequest) (*gofakes3.Object, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	obj, err := b.store.GetObject(bucket, key, rng)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(obj.Contents)
	if err != nil {
		return nil, err
	}
	obj.Contents = io.NopCloser(bytes.NewReader(body))
	obj.Hash = bytes.Clone(obj.Hash)
	return obj, nil
}

func (b *copyingBackend) HeadObject(bucket, key string) (*gofakes3.Object, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	obj, err := b.store.HeadObject(bucket, key)
	if err != nil {
		return nil, err
	}
	obj.Hash = bytes.Clone(obj.Hash)
	return obj, nil
}

func (b *copyingBackend) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64,
	conditions *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	// The body is read before taking the lock, so a slow client holds up no one.
	body, err := io.ReadAll(input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.PutObject(bucket, key, meta, bytes.NewReader(body), size, conditions)
}

func (b *copyingBackend) CopyObject(srcBucket, srcKey, dstBucket, dstKey string,
	meta map[string]string) (gofakes3.CopyObjectResult, error) {
	// gofakes3's helper: a GetObject (copied, above), then a PutObject.
	return gofakes3.CopyObject(b, srcBucket, srcKey, dstBucket, dstKey, meta)
}

func (b *copyingBackend) DeleteObject(bucket, key string) (gofakes3.ObjectDeleteResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.DeleteObject(bucket, key)
}

func (b *copyingBackend) DeleteMulti(bucket string, keys ...string) (gofakes3.MultiDeleteResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.DeleteMulti(bucket, keys...)
}

// Listings and bucket calls copy nothing out of the map (names and ETags are
// decoded into new strings), but they take the lock like the rest so that the
// rule stays simple: reads share, writes are alone.

func (b *copyingBackend) ListBuckets() ([]gofakes3.BucketInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.store.ListBuckets()
}

func (b *copyingBackend) ListBucket(bucket string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.store.ListBucket(bucket, prefix, page)
}

func (b *copyingBackend) BucketExists(bucket string) (bool, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.store.BucketExists(bucket)
}

func (b *copyingBackend) CreateBucket(bucket string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.CreateBucket(bucket)
}

func (b *copyingBackend) DeleteBucket(bucket string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.DeleteBucket(bucket)
}

func (b *copyingBackend) ForceDeleteBucket(bucket string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.store.ForceDeleteBucket(bucket)
}
