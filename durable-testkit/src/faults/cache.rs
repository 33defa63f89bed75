//! The volatile page cache: an image of each database, WAL and rollback journal, which
//! SQLite reads and writes, and which reaches the disk only where a sync (or the end
//! of the machine) writes it there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::locked;

/// The unit of a torn write, and of the dirty data the cache tracks.
pub(super) const SECTOR: u64 = 512;

/// Where an image's data lands: the real file at a sync, or the file on disk once the
/// process is gone.
pub(super) trait Disk {
    /// Why a write did not land.
    type Error;
    /// Writes `bytes` at `offset`, growing the file if needed.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Sets the file's size, cutting or zero-extending it.
    fn set_len(&mut self, len: u64) -> Result<(), Self::Error>;
}

/// One file's contents as the processes of the machine see them.
#[derive(Debug)]
pub(super) struct Image {
    data: Vec<u8>,
    /// The sectors written since the last sync.
    dirty: BTreeSet<u64>,
    /// The size of the file on disk, as of the load or the last sync.
    disk_len: u64,
    /// The smallest size the image was cut to since the last sync, if it was cut below
    /// `disk_len`: the disk must be cut there too before a later extension is written,
    /// or the bytes between would come back.
    cut_to: Option<u64>,
    /// The files open on this image.
    opens: usize,
}

impl Image {
    /// An image of a file whose disk holds `data`.
    fn loaded(data: Vec<u8>) -> Image {
        Image {
            disk_len: data.len() as u64,
            data,
            dirty: BTreeSet::new(),
            cut_to: None,
            opens: 0,
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Fills `out` from `offset`. Returns false on a short read, with the bytes past
    /// the end of the image zeroed, as SQLite requires.
    pub(super) fn read(&self, offset: u64, out: &mut [u8]) -> bool {
        let start = usize::try_from(offset).map_or(self.data.len(), |o| o.min(self.data.len()));
        let have = (self.data.len() - start).min(out.len());
        out[..have].copy_from_slice(&self.data[start..start + have]);
        out[have..].fill(0);
        have == out.len()
    }

    pub(super) fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = offset as usize;
        let end = start + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(bytes);
        self.dirty
            .extend(offset / SECTOR..=(end as u64 - 1) / SECTOR);
    }

    pub(super) fn truncate(&mut self, len: u64) {
        if len < self.disk_len {
            self.cut_to = Some(self.cut_to.map_or(len, |c| c.min(len)));
        }
        self.data.resize(len as usize, 0);
        self.dirty.retain(|&s| s * SECTOR < len);
    }

    /// Whether the disk holds exactly the image.
    fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.cut_to.is_none() && self.disk_len == self.len()
    }

    /// Writes the unsynced changes to `disk`, each only if `keep()` says so: the cut
    /// below the disk's size, each dirty sector, and the final size, in that order. A
    /// sync keeps all of them; a power loss some or none. The image is then clean:
    /// what was not kept is lost (and the image must be forgotten if it was not all
    /// kept). Runs of kept sectors are written as one write each.
    pub(super) fn persist<D: Disk>(
        &mut self,
        disk: &mut D,
        mut keep: impl FnMut() -> bool,
    ) -> Result<(), D::Error> {
        if let Some(cut) = self.cut_to
            && keep()
        {
            disk.set_len(cut)?;
        }
        let mut run: Option<(u64, u64)> = None;
        for &sector in &self.dirty {
            match run {
                _ if !keep() => continue,
                Some((first, last)) if last + 1 == sector => run = Some((first, sector)),
                _ => {
                    if let Some(done) = run.replace((sector, sector)) {
                        self.write_run(disk, done)?;
                    }
                }
            }
        }
        if let Some(done) = run {
            self.write_run(disk, done)?;
        }
        if self.disk_len != self.len() && keep() {
            disk.set_len(self.len())?;
        }
        self.dirty.clear();
        self.cut_to = None;
        self.disk_len = self.len();
        Ok(())
    }

    /// Writes sectors `first..=last` (the last one cut at the end of the image).
    fn write_run<D: Disk>(&self, disk: &mut D, (first, last): (u64, u64)) -> Result<(), D::Error> {
        let start = first * SECTOR;
        let end = ((last + 1) * SECTOR).min(self.len());
        disk.write(start, &self.data[start as usize..end as usize])
    }
}

/// The images of one VFS, by path: every connection that opens a path shares its image,
/// and an image with unsynced changes outlives its files, as a page cache does.
#[derive(Debug, Default)]
pub(super) struct Cache {
    images: Mutex<BTreeMap<PathBuf, Arc<Mutex<Image>>>>,
}

impl Cache {
    /// The image of `path`, with one more file open on it: the one held, or a new one
    /// of the bytes `load` reads from the disk.
    pub(super) fn attach<E>(
        &self,
        path: &Path,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Mutex<Image>>, E> {
        let mut images = locked(&self.images);
        let image = match images.get(path) {
            Some(image) => image.clone(),
            None => {
                let image = Arc::new(Mutex::new(Image::loaded(load()?)));
                images.insert(path.to_owned(), image.clone());
                image
            }
        };
        locked(&image).opens += 1;
        Ok(image)
    }

    /// One file open on `image` (of `path`) closed. The last one forgets a clean image:
    /// the disk holds it all, and a later open loads the disk again, which sees any
    /// change made to the file outside SQLite meanwhile.
    pub(super) fn detach(&self, path: &Path, image: &Arc<Mutex<Image>>) {
        let mut images = locked(&self.images);
        let mut held = locked(image);
        held.opens -= 1;
        let current = images.get(path).is_some_and(|i| Arc::ptr_eq(i, image));
        if held.opens == 0 && held.is_clean() && current {
            images.remove(path);
        }
    }

    /// `path` was deleted: its unsynced changes have nowhere to go. (A file still open
    /// on the image keeps it, as an open descriptor keeps a deleted file.)
    pub(super) fn forget(&self, path: &Path) {
        locked(&self.images).remove(path);
    }

    /// Every image, forgotten, in the order of their paths.
    pub(super) fn take_all(&self) -> BTreeMap<PathBuf, Arc<Mutex<Image>>> {
        std::mem::take(&mut *locked(&self.images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk in memory that records what it was asked.
    #[derive(Default)]
    struct Mem {
        bytes: Vec<u8>,
        writes: Vec<(u64, usize)>,
    }

    impl Disk for Mem {
        type Error = ();
        fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ()> {
            let end = offset as usize + bytes.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[offset as usize..end].copy_from_slice(bytes);
            self.writes.push((offset, bytes.len()));
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> Result<(), ()> {
            self.bytes.resize(len as usize, 0);
            Ok(())
        }
    }

    #[test]
    fn a_sync_writes_runs_of_dirty_sectors_and_the_size() {
        let mut disk = Mem {
            bytes: vec![7; 3000],
            ..Mem::default()
        };
        let mut image = Image::loaded(disk.bytes.clone());
        image.write(10, &[1; 20]);
        image.write(1100, &[2; 600]);
        image.write(4000, &[3; 10]);
        image.persist(&mut disk, || true).expect("persist");
        assert_eq!(disk.writes, [(0, 512), (1024, 1024), (3584, 426)]);
        assert_eq!(disk.bytes.len(), 4010);
        assert_eq!(disk.bytes, image.data);
        assert!(image.is_clean());
    }

    #[test]
    fn a_cut_then_extended_file_does_not_bring_old_bytes_back() {
        let mut disk = Mem {
            bytes: vec![7; 2048],
            ..Mem::default()
        };
        let mut image = Image::loaded(disk.bytes.clone());
        image.truncate(100);
        image.write(1500, &[1; 10]);
        image.persist(&mut disk, || true).expect("persist");
        assert_eq!(disk.bytes, image.data);
        assert_eq!(disk.bytes[100..1500], [0; 1400]);
    }

    #[test]
    fn a_lost_sync_leaves_the_disk_alone() {
        let mut disk = Mem {
            bytes: vec![7; 1024],
            ..Mem::default()
        };
        let mut image = Image::loaded(disk.bytes.clone());
        image.write(0, &[1; 2000]);
        image.persist(&mut disk, || false).expect("persist");
        assert_eq!(disk.bytes, [7; 1024]);
        let mut out = [9; 8];
        assert!(!image.read(1998, &mut out), "a short read");
        assert_eq!(out, [1, 1, 0, 0, 0, 0, 0, 0]);
    }
}
