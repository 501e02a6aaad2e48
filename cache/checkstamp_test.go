package cache

import (
	"os"
	"path/filepath"
	"testing"
)

// A check stamp is trusted in the boot that wrote it while the data file
// is the version stamped; a change of the data file (during the check or
// after), another boot, a damaged stamp or an unknown boot void it.
func TestCheckStamp(t *testing.T) {
	size := 3*MinUnitSize + 5
	for _, tc := range []struct {
		name       string
		stamp      bool
		duringHash func(t *testing.T, o *objectFixture) // between DataVersion and StampChecked
		after      func(t *testing.T, o *objectFixture)
		readBoot   string // the reading process's boot, if not the writer's
		want       bool
	}{
		{name: "none", want: false},
		{name: "stamped", stamp: true, want: true},
		{name: "data written during the check", stamp: true, duringHash: writeData, want: false},
		{name: "data written after", stamp: true, after: writeData, want: false},
		{name: "data made anew", stamp: true, after: remakeData, want: false},
		{name: "another boot", stamp: true, readBoot: "00000000-0000-0000-0000-000000000000", want: false},
		{name: "boot unknown", stamp: true, readBoot: "-", want: false},
		{name: "stamp damaged", stamp: true, after: damageStamp, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newPairFixture(t, size)
			o.writePair(t, 0, int64(size))
			if o.d.bootID == "" {
				t.Skip("the kernel gives no boot id")
			}
			f, err := o.d.OpenObjectPair(o.name, o.id, int64(size), MinUnitSize)
			if err != nil {
				t.Fatal(err)
			}
			if tc.stamp {
				v, err := f.DataVersion()
				if err != nil {
					t.Fatal(err)
				}
				if tc.duringHash != nil {
					tc.duringHash(t, o)
				}
				err = f.StampChecked(v)
				if (err != nil) != (tc.duringHash != nil) {
					t.Fatalf("StampChecked: %v", err)
				}
			}
			f.Close()
			if tc.after != nil {
				tc.after(t, o)
			}
			switch tc.readBoot {
			case "":
			case "-":
				o.d.bootID = ""
			default:
				o.d.bootID = tc.readBoot
			}
			g, err := o.d.OpenObjectPair(o.name, o.id, int64(size), MinUnitSize)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if got := g.CheckedThisBoot(); got != tc.want {
				t.Errorf("CheckedThisBoot = %v, want %v", got, tc.want)
			}
		})
	}
}

func writeData(t *testing.T, o *objectFixture) {
	f, err := os.OpenFile(filepath.Join(o.root, o.name), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(o.data[:1], 0); err != nil { // the same byte: only the ctime moves
		t.Fatal(err)
	}
}

func remakeData(t *testing.T, o *objectFixture) {
	p := filepath.Join(o.root, o.name)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, o.data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func damageStamp(t *testing.T, o *objectFixture) {
	f, err := os.OpenFile(filepath.Join(o.root, o.name)+RecordsSuffix, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{'X'}, int64(checkStampAt+len(checkStampMagic)+bootIDLen+3)); err != nil {
		t.Fatal(err)
	}
}
