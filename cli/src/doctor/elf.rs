//! Just enough of ELF64 (little-endian) to answer two questions about a
//! shared object without loading it: which dynamic symbols it defines
//! (`.dynsym`), and which symbol versions it needs from which library
//! (`.gnu.version_r`, e.g. `GLIBC_2.34` from `libc.so.6`).

use std::collections::BTreeSet;

const SHT_DYNSYM: u32 = 11;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

/// What [`parse`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Info {
    /// Names of the global/weak symbols the object defines.
    pub exports: BTreeSet<String>,
    /// `(library, version)` pairs it needs, e.g. `("libc.so.6", "GLIBC_2.34")`.
    pub needs: Vec<(String, String)>,
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u16(&self, at: usize) -> Result<u16, String> {
        self.0
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }
    fn u32(&self, at: usize) -> Result<u32, String> {
        self.0
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }
    fn u64(&self, at: usize) -> Result<usize, String> {
        let b = self
            .0
            .get(at..at + 8)
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| "offset out of range".to_string())
    }
    /// The NUL-terminated string at `table + at`.
    fn cstr(&self, table: &Section, at: usize) -> Result<String, String> {
        if at >= table.size {
            return Err(format!("string offset {at} outside its table"));
        }
        let start = table.offset + at;
        let end = table.offset + table.size;
        let s = self
            .0
            .get(start..end.min(self.0.len()))
            .ok_or("string table outside the file")?;
        let len = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..len]).into_owned())
    }
}

#[derive(Clone, Copy)]
struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
    entsize: usize,
}

/// Parses `data` as a 64-bit little-endian ELF file.
pub fn parse(data: &[u8]) -> Result<Info, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let b = Bytes(data);
    let shoff = b.u64(0x28)?;
    let shentsize = usize::from(b.u16(0x3a)?);
    let shnum = usize::from(b.u16(0x3c)?);
    if shoff == 0 || shnum == 0 {
        return Err("ELF file without section headers".into());
    }
    if shentsize < 64 {
        return Err(format!("ELF section header size {shentsize}"));
    }
    let mut sections = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let at = shoff + i * shentsize;
        sections.push(Section {
            kind: b.u32(at + 4)?,
            offset: b.u64(at + 24)?,
            size: b.u64(at + 32)?,
            link: b.u32(at + 40)?,
            info: b.u32(at + 44)?,
            entsize: b.u64(at + 56)?,
        });
    }
    let strtab = |s: &Section| {
        sections
            .get(s.link as usize)
            .copied()
            .ok_or_else(|| "section link out of range".to_string())
    };
    let mut info = Info::default();
    for s in sections.iter().filter(|s| s.kind == SHT_DYNSYM) {
        let names = strtab(s)?;
        let entsize = if s.entsize == 0 { 24 } else { s.entsize };
        // Entry 0 is the undefined symbol.
        for i in 1..s.size / entsize {
            let at = s.offset + i * entsize;
            let name = b.u32(at)? as usize;
            let bind = data.get(at + 4).ok_or("truncated symbol table")? >> 4;
            let shndx = b.u16(at + 6)?;
            // STB_GLOBAL = 1, STB_WEAK = 2; SHN_UNDEF = 0.
            if shndx != 0 && (bind == 1 || bind == 2) && name != 0 {
                info.exports.insert(b.cstr(&names, name)?);
            }
        }
    }
    for s in sections.iter().filter(|s| s.kind == SHT_GNU_VERNEED) {
        let names = strtab(s)?;
        let mut at = s.offset;
        for _ in 0..s.info {
            let cnt = b.u16(at + 2)?;
            let file = b.cstr(&names, b.u32(at + 4)? as usize)?;
            let mut aux = at + b.u32(at + 8)? as usize;
            for _ in 0..cnt {
                info.needs
                    .push((file.clone(), b.cstr(&names, b.u32(aux + 8)? as usize)?));
                match b.u32(aux + 12)? {
                    0 => break,
                    next => aux += next as usize,
                }
            }
            match b.u32(at + 12)? {
                0 => break,
                next => at += next as usize,
            }
        }
    }
    Ok(info)
}

/// `"GLIBC_2.2.5"` → `[2, 2, 5]`; `None` for other version names.
pub fn glibc_version(name: &str) -> Option<Vec<u32>> {
    parse_version(name.strip_prefix("GLIBC_")?)
}

/// `"2.36"` → `[2, 36]`.
pub fn parse_version(v: &str) -> Option<Vec<u32>> {
    v.trim().split('.').map(|p| p.parse().ok()).collect()
}

/// `[2, 34]` → `"2.34"`.
pub fn show_version(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}
