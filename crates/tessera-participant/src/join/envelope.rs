//! A join message as it travels through the coordinator: what it is (run,
//! join, sender, recipient, kind, sequence number), its payload, and the
//! sender's certificate and signature over all of that. The recipient
//! checks every field against what it expects and, with mutual TLS, the
//! certificate against the federation CA and the signature against the
//! certificate: a coordinator can neither forge, alter, replay nor reorder
//! a site's message. Without TLS the envelope carries no signature, and the
//! recipient says so.

const MAGIC: &[u8; 4] = b"TSJ1";

/// The largest field of an envelope (its payload), bytes.
const MAX_FIELD: usize = 15 << 20;

/// What a message says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub run: String,
    pub join: String,
    pub from: String,
    pub to: String,
    pub kind: String,
    pub seq: u32,
}

/// A parsed envelope.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub header: Header,
    pub payload: Vec<u8>,
    pub certificate: Vec<u8>,
    pub signature: Vec<u8>,
    /// The bytes the signature covers.
    signed: Vec<u8>,
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

/// The bytes a sender signs: every field but the signature.
pub(crate) fn signed_bytes(header: &Header, payload: &[u8], certificate: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + certificate.len() + 256);
    out.extend_from_slice(MAGIC);
    for field in [
        header.run.as_bytes(),
        header.join.as_bytes(),
        header.from.as_bytes(),
        header.to.as_bytes(),
        header.kind.as_bytes(),
        &header.seq.to_le_bytes(),
        payload,
        certificate,
    ] {
        put(&mut out, field);
    }
    out
}

/// The envelope's bytes: the signed bytes, then the signature.
pub(crate) fn seal(signed: Vec<u8>, signature: &[u8]) -> Vec<u8> {
    let mut out = signed;
    put(&mut out, signature);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn field(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len_end = self.at.checked_add(4).filter(|&e| e <= self.bytes.len());
        let Some(len_end) = len_end else {
            return Err(format!("join envelope: {what} is cut short"));
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.bytes[self.at..len_end]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FIELD {
            return Err(format!(
                "join envelope: {what} declares {len} bytes, over {MAX_FIELD}"
            ));
        }
        let end = len_end
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!("join envelope: {what} declares {len} bytes, fewer are there")
            })?;
        self.at = end;
        Ok(&self.bytes[len_end..end])
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let field = self.field(what)?;
        if field.len() > 256 {
            return Err(format!("join envelope: {what} is over 256 bytes"));
        }
        String::from_utf8(field.to_vec()).map_err(|_| format!("join envelope: {what} is not UTF-8"))
    }
}

impl Envelope {
    /// Parses an envelope's framing (nothing is trusted yet).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.get(..4) != Some(MAGIC.as_slice()) {
            return Err("join envelope: not a Tessera join envelope (magic)".into());
        }
        let mut r = Reader { bytes, at: 4 };
        let header = Header {
            run: r.text("run")?,
            join: r.text("join")?,
            from: r.text("from")?,
            to: r.text("to")?,
            kind: r.text("kind")?,
            seq: {
                let seq = r.field("seq")?;
                let seq: [u8; 4] = seq
                    .try_into()
                    .map_err(|_| "join envelope: seq is not 4 bytes".to_string())?;
                u32::from_le_bytes(seq)
            },
        };
        let payload = r.field("payload")?.to_vec();
        let certificate = r.field("certificate")?.to_vec();
        let signed = bytes[..r.at].to_vec();
        let signature = r.field("signature")?.to_vec();
        if r.at != bytes.len() {
            return Err(format!(
                "join envelope: {} bytes after the signature",
                bytes.len() - r.at
            ));
        }
        Ok(Self {
            header,
            payload,
            certificate,
            signature,
            signed,
        })
    }

    /// The bytes the signature covers.
    pub(crate) fn signed(&self) -> &[u8] {
        &self.signed
    }

    /// Refuses an envelope whose header is not `expected`.
    pub(crate) fn expect(&self, expected: &Header) -> Result<(), String> {
        let h = &self.header;
        let mismatch = |field: &str, got: &str, want: &str| {
            Err(format!(
                "join envelope: its {field} is '{}', expected '{}' (altered, replayed or reordered)",
                tessera_proto::shown(got, 64),
                tessera_proto::shown(want, 64)
            ))
        };
        if h.run != expected.run {
            return mismatch("run", &h.run, &expected.run);
        }
        if h.join != expected.join {
            return mismatch("join", &h.join, &expected.join);
        }
        if h.from != expected.from {
            return mismatch("sender", &h.from, &expected.from);
        }
        if h.to != expected.to {
            return mismatch("recipient", &h.to, &expected.to);
        }
        if h.kind != expected.kind && h.kind != "refuse" {
            return mismatch("kind", &h.kind, &expected.kind);
        }
        if h.seq != expected.seq {
            return mismatch(
                "sequence number",
                &h.seq.to_string(),
                &expected.seq.to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn header() -> Header {
        Header {
            run: "r".into(),
            join: "j".into(),
            from: "a".into(),
            to: "b".into(),
            kind: "query".into(),
            seq: 2,
        }
    }

    #[test]
    fn an_envelope_round_trips_and_truncations_are_refused() {
        let signed = signed_bytes(&header(), b"payload", b"cert");
        let bytes = seal(signed.clone(), b"sig");
        let e = Envelope::parse(&bytes).unwrap();
        assert_eq!(e.header, header());
        assert_eq!(e.payload, b"payload");
        assert_eq!(e.signed(), signed.as_slice());
        e.expect(&header()).unwrap();
        let mut other = header();
        other.seq = 3;
        assert!(e.expect(&other).unwrap_err().contains("sequence number"));
        for cut in 0..bytes.len() {
            assert!(Envelope::parse(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Envelope::parse(&long).is_err());
    }
}
