// Package testbed runs bgbfs against real servers for the end-to-end tests
// and the benchmarks: a MinIO server (StartMinIO), an S3 admin client for
// setting buckets up (NewS3Admin), a reverse proxy that counts S3 requests
// by operation (NewCountingProxy), a runner for the real bgbfs binary
// (Mount, Run) and deterministic test data (PatternObject, GenNPZ).
//
// Nothing here depends on package testing: constructors return errors and
// values with Stop/Close/Unmount methods, so a test registers them with
// t.Cleanup and a benchmark program defers them.
package testbed
