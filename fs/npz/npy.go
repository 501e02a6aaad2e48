package npz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// NPYLayout is where the rows of a C-order .npy array lie: the first
// axis is the one a loader indexes (arr[i]), so a read of one row is a
// read of RowBytes bytes at DataOffset + i*RowBytes.
type NPYLayout struct {
	DataOffset int64
	RowBytes   int64
	Rows       int64
}

var (
	npyDescr   = regexp.MustCompile(`'descr'\s*:\s*'([<>|=])?([a-zA-Z])(\d+)'`)
	npyFortran = regexp.MustCompile(`'fortran_order'\s*:\s*(True|False)`)
	npyShape   = regexp.MustCompile(`'shape'\s*:\s*\(([^)]*)\)`)
)

// ParseNPYHeader reads the layout from the start of a .npy file (format
// versions 1 to 3). Arrays without rows (0-d, Fortran order, structured or
// object dtypes) are reported as errors: they have no row to read ahead.
func ParseNPYHeader(b []byte) (NPYLayout, error) {
	if len(b) < 10 || string(b[:6]) != "\x93NUMPY" {
		return NPYLayout{}, errors.New("npy: no magic")
	}
	var hlen, start int
	switch b[6] {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(b[8:])), 10
	case 2, 3:
		if len(b) < 12 {
			return NPYLayout{}, errors.New("npy: short header")
		}
		hlen, start = int(binary.LittleEndian.Uint32(b[8:])), 12
	default:
		return NPYLayout{}, fmt.Errorf("npy: format version %d", b[6])
	}
	if start+hlen > len(b) {
		return NPYLayout{}, errors.New("npy: header longer than what was given")
	}
	h := string(b[start : start+hlen])
	d := npyDescr.FindStringSubmatch(h)
	f := npyFortran.FindStringSubmatch(h)
	s := npyShape.FindStringSubmatch(h)
	if d == nil || f == nil || s == nil {
		return NPYLayout{}, fmt.Errorf("npy: header %q is not a plain array's", h)
	}
	if f[1] == "True" {
		return NPYLayout{}, errors.New("npy: Fortran order")
	}
	item, _ := strconv.ParseInt(d[3], 10, 64)
	if d[2] == "U" {
		item *= 4 // UCS-4 characters
	}
	var dims []int64
	for _, part := range strings.Split(s[1], ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(part, "L"), 10, 64)
		if err != nil || n < 0 {
			return NPYLayout{}, fmt.Errorf("npy: shape (%s)", s[1])
		}
		dims = append(dims, n)
	}
	if len(dims) == 0 || item <= 0 {
		return NPYLayout{}, errors.New("npy: 0-d array")
	}
	row := item
	for _, n := range dims[1:] {
		if n > 0 && row > (1<<62)/n {
			return NPYLayout{}, errors.New("npy: rows too large")
		}
		row *= n
	}
	if row == 0 {
		return NPYLayout{}, errors.New("npy: empty rows")
	}
	return NPYLayout{DataOffset: int64(start + hlen), RowBytes: row, Rows: dims[0]}, nil
}
