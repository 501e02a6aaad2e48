// Command bgbfs mounts an S3 bucket prefix as a read-only filesystem.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `bgbfs mounts an S3 bucket prefix as a read-only filesystem.

Usage:
  bgbfs mount [flags] s3://BUCKET[/PREFIX/] MOUNTPOINT
  bgbfs exec [mount flags] s3://BUCKET[/PREFIX/] MOUNTPOINT -- COMMAND [ARGS...]
  bgbfs unmount [flags] MOUNTPOINT
  bgbfs index [flags] s3://BUCKET[/PREFIX/] --cache-dir DIR|s3://BUCKET/PREFIX/
  bgbfs version
  bgbfs s3://BUCKET[/PREFIX/] MOUNTPOINT -o OPTIONS   (as mount.fuse3 calls it: mounts in the background)

Run "bgbfs COMMAND --help" for the flags of a command.
`

// usageError is a mistake on the command line: reported in one line with
// a pointer to --help.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "mount":
		err = runMount(ctx, rest, stdout, stderr)
	case "exec":
		err = runExec(ctx, rest, stdout, stderr)
	case "index":
		err = runIndex(ctx, rest, stdout, stderr)
	case "unmount", "umount":
		err = runUnmount(ctx, rest, stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "bgbfs", buildVersion())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		if strings.HasPrefix(cmd, "s3://") {
			// mount -t fuse.bgbfs runs "bgbfs SOURCE MOUNTPOINT -o ..."
			// and waits for it to return once mounted.
			err = runMount(ctx, append([]string{"--daemon"}, args...), stdout, stderr)
			break
		}
		err = usageError{fmt.Sprintf("unknown command %q (want mount, exec, index, unmount or version)", cmd)}
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, pflag.ErrHelp):
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "bgbfs: %s (see bgbfs --help)\n", oneLine(err.Error()))
		return 2
	}
	fmt.Fprintf(stderr, "bgbfs: %s\n", oneLine(err.Error()))
	return 1
}

// oneLine keeps an error to one line, whatever a library put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}

// newFlagSet makes a flag set that reports errors to us instead of printing.
func newFlagSet(name, synopsis string, stdout io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage:\n  %s\n\nFlags:\n%s", synopsis, fs.FlagUsages())
	}
	return fs
}

// parseFlags parses args, turning any flag error but --help into a
// usageError.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		return err // pflag has printed the usage
	}
	if err != nil {
		return usageError{err.Error()}
	}
	return nil
}
