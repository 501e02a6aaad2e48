package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is the module whose root RepoRoot looks for.
const ModulePath = "github.com/bgbfs/bgbfs"

// RepoRoot walks up from the working directory to the directory whose
// go.mod declares ModulePath.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod for module %s above the working directory", ModulePath)
		}
		dir = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == "module" {
			return fields[1] == ModulePath
		}
	}
	return false
}

// BgbfsBinary returns the bgbfs binary to test: $BGBFS_BIN if set (it must
// exist), otherwise a fresh build of ./cmd/bgbfs into workDir/bgbfs.
func BgbfsBinary(repoRoot, workDir string) (string, error) {
	if p := os.Getenv("BGBFS_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if err := checkExecutable(abs); err != nil {
			return "", fmt.Errorf("BGBFS_BIN: %w", err)
		}
		return abs, nil
	}
	out := filepath.Join(workDir, "bgbfs")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/bgbfs")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("BGBFS_BIN is unset and `go build ./cmd/bgbfs` failed: %v\n%s", err, b)
	}
	return out, nil
}

// MinIOBinary returns $MINIO_BIN or <repo>/.tools/bin/minio, failing with
// instructions when it is not there.
func MinIOBinary(repoRoot string) (string, error) {
	p := os.Getenv("MINIO_BIN")
	if p == "" {
		p = filepath.Join(repoRoot, ".tools", "bin", "minio")
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("MinIO server binary not found (%v): run `make tools` in %s to build it, or set MINIO_BIN", err, repoRoot)
	}
	return p, nil
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("listener has no TCP address")
	}
	return addr.Port, nil
}
