//! What the Send API accepts as media (meta-platform.md §4), checked before anything is sent.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Audio,
    Video,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("{0} is not a format Instagram accepts for this kind of attachment")]
    Format(String),
    #[error("attachment is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("attachment URL must be https")]
    Url,
}

const MB: u64 = 1024 * 1024;

impl MediaKind {
    fn limit(self) -> u64 {
        match self {
            MediaKind::Image => 8 * MB,
            MediaKind::Audio | MediaKind::Video | MediaKind::File => 25 * MB,
        }
    }

    fn accepts(self, mime: &str) -> bool {
        let mime = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match self {
            MediaKind::Image => matches!(mime.as_str(), "image/png" | "image/jpeg"),
            MediaKind::Audio => matches!(
                mime.as_str(),
                "audio/aac"
                    | "audio/mp4"
                    | "audio/x-m4a"
                    | "audio/m4a"
                    | "audio/wav"
                    | "audio/x-wav"
                    | "audio/wave"
            ),
            MediaKind::Video => matches!(
                mime.as_str(),
                "video/mp4"
                    | "video/ogg"
                    | "video/x-msvideo"
                    | "video/avi"
                    | "video/quicktime"
                    | "video/webm"
            ),
            MediaKind::File => mime == "application/pdf",
        }
    }
}

/// Checks an attachment's URL, type and size against Instagram's limits.
pub fn validate(kind: MediaKind, url: &str, mime: &str, size: u64) -> Result<(), MediaError> {
    if !url.starts_with("https://") {
        return Err(MediaError::Url);
    }
    if !kind.accepts(mime) {
        return Err(MediaError::Format(mime.to_owned()));
    }
    if size > kind.limit() {
        return Err(MediaError::TooLarge {
            size,
            limit: kind.limit(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_sizes_follow_the_send_api_limits() {
        let url = "https://cdn.example/a";
        assert_eq!(
            validate(MediaKind::Image, url, "image/jpeg", 8 * MB),
            Ok(())
        );
        assert!(matches!(
            validate(MediaKind::Image, url, "image/jpeg", 8 * MB + 1),
            Err(MediaError::TooLarge { .. })
        ));
        assert!(matches!(
            validate(MediaKind::Image, url, "image/gif", 10),
            Err(MediaError::Format(_))
        ));
        assert_eq!(
            validate(MediaKind::Video, url, "video/mp4", 25 * MB),
            Ok(())
        );
        assert_eq!(
            validate(MediaKind::File, url, "application/pdf; charset=binary", 1),
            Ok(())
        );
        assert_eq!(
            validate(MediaKind::Audio, "http://x/a", "audio/aac", 1),
            Err(MediaError::Url)
        );
    }
}
