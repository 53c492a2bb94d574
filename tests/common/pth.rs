//! Writes state dicts in the format `torch.save` uses (a stored zip archive holding a pickle
//! protocol 2 `data.pkl` that rebuilds each tensor from a storage file), so that the `.pth`
//! loading path is tested on real files without PyTorch.

use std::io::Write;
use std::path::Path;

/// Element type of the storages to write.
#[derive(Debug, Clone, Copy)]
pub enum TorchDType {
    F32,
    F16,
    BF16,
}

impl TorchDType {
    fn storage_class(self) -> &'static str {
        match self {
            TorchDType::F32 => "FloatStorage",
            TorchDType::F16 => "HalfStorage",
            TorchDType::BF16 => "BFloat16Storage",
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            TorchDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TorchDType::F16 => {
                values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
            }
            TorchDType::BF16 => {
                values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
            }
        }
    }
}

fn unicode(out: &mut Vec<u8>, text: &str) {
    out.push(b'X'); // BINUNICODE
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(text.as_bytes());
}

fn int(out: &mut Vec<u8>, value: usize) {
    out.push(b'J'); // BININT
    out.extend((value as i32).to_le_bytes());
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend(format!("{module}\n{name}\n").as_bytes());
}

fn int_tuple(out: &mut Vec<u8>, values: &[usize]) {
    out.push(b'(');
    for v in values {
        int(out, *v);
    }
    out.push(b't');
}

/// The pickle of an `OrderedDict` of tensors whose storages are named "0", "1", ...
fn state_dict_pickle(tensors: &[(String, Vec<usize>)], dtype: TorchDType) -> Vec<u8> {
    let mut out = vec![0x80, 2]; // PROTO 2
    global(&mut out, "collections", "OrderedDict");
    out.extend(b")R"); // EMPTY_TUPLE, REDUCE
    out.push(b'(');
    for (index, (key, shape)) in tensors.iter().enumerate() {
        unicode(&mut out, key);
        global(&mut out, "torch._utils", "_rebuild_tensor_v2");
        out.push(b'(');
        // Persistent id: ('storage', storage class, key, location, numel).
        out.push(b'(');
        unicode(&mut out, "storage");
        global(&mut out, "torch", dtype.storage_class());
        unicode(&mut out, &index.to_string());
        unicode(&mut out, "cpu");
        int(&mut out, shape.iter().product());
        out.push(b't');
        out.push(b'Q'); // BINPERSID
        int(&mut out, 0);
        int_tuple(&mut out, shape);
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        int_tuple(&mut out, &strides);
        out.push(0x89); // NEWFALSE: requires_grad
        global(&mut out, "collections", "OrderedDict");
        out.extend(b")R");
        out.push(b't');
        out.push(b'R');
    }
    out.push(b'u'); // SETITEMS
    out.push(b'.');
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zip archive with stored (uncompressed) entries.
fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u32.to_le_bytes()); // time, date
            h.extend(crc.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend(0u16.to_le_bytes()); // comment
                h.extend(0u16.to_le_bytes()); // disk
                h.extend(0u16.to_le_bytes()); // internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data);
        central.extend(header(0x0201_4b50, true));
    }
    let central_offset = out.len() as u32;
    let central_size = central.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend(central_size.to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    std::fs::File::create(path)?.write_all(&out)
}

/// Save `(key, shape, values)` as a `.pth` state dict in `dtype`.
pub fn write_pth(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: TorchDType,
) -> std::io::Result<()> {
    let meta: Vec<(String, Vec<usize>)> =
        tensors.iter().map(|(k, s, _)| (k.clone(), s.clone())).collect();
    let mut entries = vec![("archive/data.pkl".to_string(), state_dict_pickle(&meta, dtype))];
    for (index, (_, _, values)) in tensors.iter().enumerate() {
        entries.push((format!("archive/data/{index}"), dtype.encode(values)));
    }
    entries.push(("archive/version".to_string(), b"3\n".to_vec()));
    entries.push(("archive/byteorder".to_string(), b"little".to_vec()));
    write_zip(path, &entries)
}
