//! Small filesystem helpers every writer in the lab uses: atomic writes with owner and mode,
//! private directories for key material.

use crate::error::LabError;
use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

/// Write `contents` to `path` atomically (temp file in the same directory, then rename),
/// with `mode` and `uid:gid` set before the file becomes visible under its name.
pub fn write_file(path: &Path, contents: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), LabError> {
    let parent = path.parent().ok_or_else(|| LabError::Spec(format!("{} has no parent", path.display())))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent)
        .map_err(LabError::io(format!("creating a temp file beside {}", path.display())))?;
    temp.write_all(contents).map_err(LabError::io(format!("writing {}", path.display())))?;
    temp.as_file().sync_all().map_err(LabError::io(format!("syncing {}", path.display())))?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))?;
    chown(temp.path(), Some(uid), Some(gid)).map_err(LabError::io(format!("chown {}", path.display())))?;
    temp.persist(path).map_err(|e| LabError::Io { what: format!("renaming into {}", path.display()), source: e.error })?;
    Ok(())
}

/// Create `path` (and parents) and set its mode and owner.
pub fn make_dir(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), LabError> {
    std::fs::create_dir_all(path).map_err(LabError::io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(LabError::io(format!("chmod {}", path.display())))?;
    chown(path, Some(uid), Some(gid)).map_err(LabError::io(format!("chown {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_atomically_with_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_file(&path, b"secret", 0o600, 998, 998).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), (998, 998));
        write_file(&path, b"new", 0o644, 0, 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp files left beside the target");
    }
}
