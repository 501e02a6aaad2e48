// Package fsname says which strings can be file names in a directory of
// the mount: keys' path components and archive members' names alike.
package fsname

import (
	"fmt"
	"strings"
)

// MaxLen is Linux's NAME_MAX: longer names cannot be file names.
const MaxLen = 255

// Problem says why name cannot be the name of a file or directory, or
// returns "" if it can.
func Problem(name string) string {
	switch {
	case name == "":
		return "empty name"
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not a file name", name)
	case len(name) > MaxLen:
		return fmt.Sprintf("name of %d bytes is over %d", len(name), MaxLen)
	case strings.IndexByte(name, 0) >= 0:
		return "NUL byte in name"
	case strings.IndexByte(name, '/') >= 0:
		return "slash in name"
	}
	return ""
}
