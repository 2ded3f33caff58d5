package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Dir is a Store of one JSON file per job in a directory, safe for many processes.
type Dir struct{ dir string }

// OpenDir returns the store in dir, creating the directory if needed.
func OpenDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &Dir{dir: dir}, nil
}

func (d *Dir) path(job string) string { return filepath.Join(d.dir, "job-"+job+".json") }

// Get implements Store. A record is only ever replaced whole (rename), so Get needs no
// lock.
func (d *Dir) Get(job string) (Record, bool, error) {
	if err := checkJob(job); err != nil {
		return Record{}, false, err
	}
	return d.read(job)
}

func (d *Dir) read(job string) (Record, bool, error) {
	var rec Record
	b, err := os.ReadFile(d.path(job))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("store: %s: %w", d.path(job), err)
	}
	return rec, true, nil
}

// Put implements Store: under the job's lock file (held by the kernel, so a writer
// killed mid-Put leaves no lock behind), read the record, apply the fencing rule, and
// replace the file with a rename of a synced temporary file. A rejected write is
// recorded too.
func (d *Dir) Put(job string, w Write) error {
	if err := checkJob(job); err != nil {
		return err
	}
	unlock, err := lockFile(filepath.Join(d.dir, "job-"+job+".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	rec, _, err := d.read(job)
	if err != nil {
		return err
	}
	applyErr := apply(&rec, job, w)
	if err := d.replace(job, &rec); err != nil {
		return err
	}
	return applyErr
}

func (d *Dir) replace(job string, rec *Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(d.dir, "job-"+job+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, d.path(job))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// checkJob keeps job ids to names that are safe as part of a file name.
func checkJob(job string) error {
	if job == "" || len(job) > 64 {
		return fmt.Errorf("store: bad job id %q", job)
	}
	for _, c := range job {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("store: bad job id %q", job)
		}
	}
	return nil
}
