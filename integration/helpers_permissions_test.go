package integration

// Helpers of the permission tests: an unprivileged user and what it may
// open.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/bgbfs/bgbfs/integration/testbed"
)

// openOp returns an operation that opens path with flag (closing it if
// that succeeds), for tables of refused changes.
func openOp(path string, flag int) func() error {
	return func() error {
		f, err := os.OpenFile(path, flag, 0o644)
		if err == nil {
			f.Close()
		}
		return err
	}
}

// nobody is the unprivileged uid and gid the permission tests run as.
const nobody = 65534

// publicDir makes a fresh directory that every user can reach and list
// (t.TempDir's are 0700), removed at the end of the test: register it
// before mounting in it, so that the unmount runs first.
func publicDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgbfs-public-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Only remove what is no longer mounted.
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != dir {
				if _, mounted := testbed.MountedAt(p); mounted {
					t.Errorf("%s is still mounted at the end of the test", p)
					return filepath.SkipAll
				}
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// asNobody runs a command as uid and gid 65534 with no supplementary
// groups, with a timeout.
func asNobody(timeout time.Duration, name string, args ...string) (stdout []byte, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"--reuid", strconv.Itoa(nobody), "--regid", strconv.Itoa(nobody), "--clear-groups", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "setpriv", full...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", "HOME=/"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// asNobodyRunner runs a command as uid and gid 65534 with no
// supplementary groups, in a shell script.
var asNobodyRunner = fmt.Sprintf("/usr/bin/setpriv --reuid %d --regid %d --clear-groups --", nobody, nobody)

// wrapBinary writes pub/name, a script that runs a copy of the binary
// under test (pub/bgbfs, which every user can run) after the shell lines
// prelude, through runner (asNobodyRunner, or ""): how tests run bgbfs as
// another user, or under another umask.
func wrapBinary(t testing.TB, pub, name, prelude, runner string) string {
	t.Helper()
	bin := filepath.Join(pub, "bgbfs")
	if _, err := os.Stat(bin); err != nil {
		if err := copyFile(env.bgbfs, bin, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := filepath.Join(pub, name)
	script := fmt.Sprintf("#!/bin/sh\n%s\nexec %s %s \"$@\"\n", prelude, runner, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}
