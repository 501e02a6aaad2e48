package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"strings"
	"syscall"
)

// A check stamp, in the spare part of a pair's records-file header page,
// says that the pair's data file passed its owner's check of the whole
// byte string (the member's CRC-32 for a decoded member) during this
// boot, and which version of the data file that was: its identity, size
// and ctime. A process of the same boot trusts the stamp while the data
// file is that version: every change made through the kernel moves the
// ctime, and the kernel returns what was checked (from its page cache,
// or from the disk it wrote back to). After a reboot the disk may hold
// less than what was checked (pages a crash kept from being written
// back), so the boot differs and the file is checked again.
//
// Layout (little-endian), checkStampLen bytes at checkStampAt:
//
//	"BGBFSCHK" | boot id (36 bytes, /proc/sys/kernel/random/boot_id) |
//	dev | ino | size | ctime s | ctime ns | CRC-32C of what precedes
const (
	checkStampMagic = "BGBFSCHK"
	bootIDLen       = 36
	checkStampAt    = objectHeaderPage / 2
	checkStampLen   = len(checkStampMagic) + bootIDLen + 5*8 + 4
)

// DataVersion is what a check stamp vouches for: one data file, as it
// was at one change.
type DataVersion struct {
	file          FileIdentity
	size          int64
	ctime, ctimeN int64
}

// DataVersion returns the version of the pair's data file now; take it
// before a check, and stamp it after (StampChecked).
func (o *ObjectFile) DataVersion() (DataVersion, error) {
	fi, err := o.f.Stat()
	if err != nil {
		return DataVersion{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return DataVersion{}, errors.New("no stat_t for the data file")
	}
	return DataVersion{
		file:  FileIdentity{Dev: uint64(st.Dev), Ino: st.Ino},
		size:  st.Size,
		ctime: st.Ctim.Sec, ctimeN: st.Ctim.Nsec,
	}, nil
}

// CheckedThisBoot reports whether the pair's data file carries a check
// stamp of this boot for the version it is now.
func (o *ObjectFile) CheckedThisBoot() bool {
	if !o.pair || o.d.bootID == "" {
		return false
	}
	b := make([]byte, checkStampLen)
	if _, err := o.rf.ReadAt(b, checkStampAt); err != nil {
		return false
	}
	now, err := o.DataVersion()
	if err != nil {
		return false
	}
	return bytes.Equal(b, checkStamp(o.d.bootID, now))
}

// StampChecked stamps version v of the pair's data file as checked, if
// the data file is still at v (a change during the check voids it). It
// is a no-op where the dir is not writable or the boot is not known.
func (o *ObjectFile) StampChecked(v DataVersion) error {
	if !o.pair || o.d.bootID == "" || o.d.readOnly.Load() {
		return nil
	}
	if err := o.d.writes.blocked(); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	if now, err := o.DataVersion(); err != nil || now != v {
		return errors.New("data file changed during its check")
	}
	// The records file this pair was opened with, for writing: a pair
	// made anew since under the same name is not stamped.
	w, err := os.OpenFile(o.rf.Name(), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	defer w.Close()
	wfi, err := w.Stat()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	rfi, err := o.rf.Stat()
	if err != nil || IdentityOf(wfi) != IdentityOf(rfi) {
		return errors.New("records file replaced during the check")
	}
	if _, err := w.WriteAt(checkStamp(o.d.bootID, v), checkStampAt); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotWritable, err)
	}
	return nil
}

// checkStamp is the stamp of version v in boot boot.
func checkStamp(boot string, v DataVersion) []byte {
	b := make([]byte, 0, checkStampLen)
	b = append(b, checkStampMagic...)
	b = append(b, boot...)
	for _, n := range []uint64{v.file.Dev, v.file.Ino, uint64(v.size), uint64(v.ctime), uint64(v.ctimeN)} {
		b = binary.LittleEndian.AppendUint64(b, n)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// readBootID returns this boot's ID, or "" if the kernel does not say:
// then no stamp is written or trusted.
func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if id := strings.TrimSpace(string(b)); err == nil && len(id) == bootIDLen {
		return id
	}
	return ""
}
