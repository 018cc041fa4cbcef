//! Image garbage collection, as the kubelet's `realImageGCManager`: every
//! `period`, when the file system holding the runtime's images is at least
//! `high_threshold_percent` full, unused images are removed, least recently
//! used first, until it is back at `low_threshold_percent`. An image is
//! unused when no container the runtime knows (running or not) was made
//! from it; one first seen less than `minimum_age` ago is kept (it may have
//! just been pulled for a container about to be created), and so is a
//! pinned one.
//!
//! The runtime does not know when an image was last used, so the collector
//! remembers it, as the kubelet does: each detection marks the images in use
//! as used now and records when an image was first seen (images found at the
//! agent's first detection count as seen long ago).
//!
//! [`plan`] is the decision, pure and table-tested; [`ImageGcManager`]
//! gathers its inputs through the runtime (`list_images`,
//! `list_containers`, `image_fs_info`) and a [`FilesystemStats`] of the
//! image file system, and applies it with `remove_image`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use skiff_runtime::ContainerRuntime;
use skiff_runtime::cri_types as cri;

use crate::events::{Recorder, Subject};

/// The kubelet's `imageGCHighThresholdPercent`,
/// `imageGCLowThresholdPercent`, `imageMinimumGCAge` and its 5-minute GC
/// period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGcPolicy {
    /// Collect when usage reaches this; 100 turns collection off.
    pub high_threshold_percent: u8,
    /// Collect down to this.
    pub low_threshold_percent: u8,
    /// Images first seen more recently are kept.
    pub minimum_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        ImageGcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

impl ImageGcPolicy {
    /// The kubelet's validation: thresholds within 0–100, low below high.
    pub fn validate(&self) -> Result<(), String> {
        let (high, low) = (self.high_threshold_percent, self.low_threshold_percent);
        if high > 100 {
            return Err(format!(
                "image GC high threshold {high} must be between 0 and 100, inclusive"
            ));
        }
        if low > 100 {
            return Err(format!(
                "image GC low threshold {low} must be between 0 and 100, inclusive"
            ));
        }
        if low >= high {
            return Err(format!(
                "image GC low threshold {low} must be less than the high threshold {high}"
            ));
        }
        if self.period.is_zero() {
            return Err("image GC period must be positive".into());
        }
        Ok(())
    }

    /// A high threshold of 100 turns image garbage collection off.
    pub fn enabled(&self) -> bool {
        self.high_threshold_percent < 100
    }
}

/// Size and availability of the image file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

/// What the collector knows of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The CRI image id (what `remove_image` is given).
    pub id: String,
    pub size: u64,
    pub first_detected: Timestamp,
    /// `None`: never seen in use since the agent started.
    pub last_used: Option<Timestamp>,
    /// A container the runtime knows was made from it.
    pub in_use: bool,
    pub pinned: bool,
}

/// The decision of one collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// How full the file system is, in percent (rounded as the kubelet
    /// rounds: `100 - available * 100 / capacity`).
    pub usage_percent: u64,
    /// Bytes to free to get down to the low threshold (0 below the high
    /// threshold).
    pub bytes_to_free: u64,
    /// Images to remove, in order; their sizes add up to `bytes_to_free`
    /// unless there are not enough eligible images.
    pub remove: Vec<String>,
    /// The sum of the sizes of `remove`.
    pub freed: u64,
}

impl GcPlan {
    /// Bytes still to free once `remove` is done (0 when enough).
    pub fn shortfall(&self) -> u64 {
        self.bytes_to_free.saturating_sub(self.freed)
    }
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("invalid capacity 0 on image filesystem")]
    InvalidCapacity,
    #[error("container runtime: {0}")]
    Runtime(#[from] skiff_runtime::Error),
    #[error("the runtime reports no image filesystem")]
    NoImageFilesystem,
    #[error("statfs of image filesystem {path}: {source}")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "failed to garbage collect the required amount of images: attempted to free {wanted} bytes, but only found {freed} bytes eligible to free"
    )]
    NotEnough { wanted: u64, freed: u64 },
    #[error(
        "wanted to free {wanted} bytes, but freed {freed} bytes space with errors in image deletion: {errors}"
    )]
    Removal {
        wanted: u64,
        freed: u64,
        errors: String,
    },
}

/// Decides what one collection removes (the kubelet's `GarbageCollect` and
/// `freeSpace`): nothing below the high threshold; above it, the images
/// neither in use nor pinned nor younger than `minimum_age`, least recently
/// used first (never used first of all, then the earlier detected), until
/// their sizes reach what brings usage to the low threshold.
pub fn plan(
    policy: &ImageGcPolicy,
    fs: FsUsage,
    images: &[ImageInfo],
    now: Timestamp,
) -> Result<GcPlan, GcError> {
    if fs.capacity == 0 {
        return Err(GcError::InvalidCapacity);
    }
    let available = fs.available.min(fs.capacity);
    let capacity = u128::from(fs.capacity);
    let usage_percent = 100 - (u128::from(available) * 100 / capacity) as u64;
    if usage_percent < u64::from(policy.high_threshold_percent) {
        return Ok(GcPlan {
            usage_percent,
            ..Default::default()
        });
    }
    let target_available = capacity * u128::from(100 - policy.low_threshold_percent.min(100)) / 100;
    let bytes_to_free = target_available.saturating_sub(u128::from(available)) as u64;
    let min_age = k8s_openapi::jiff::SignedDuration::try_from(policy.minimum_age)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    let mut eligible: Vec<&ImageInfo> = images
        .iter()
        .filter(|i| !i.in_use && !i.pinned)
        .filter(|i| i.last_used.is_none_or(|t| t < now))
        .filter(|i| now.duration_since(i.first_detected) >= min_age)
        .collect();
    eligible.sort_by(|a, b| {
        (a.last_used, a.first_detected, &a.id).cmp(&(b.last_used, b.first_detected, &b.id))
    });
    let mut out = GcPlan {
        usage_percent,
        bytes_to_free,
        ..Default::default()
    };
    for image in eligible {
        if out.freed >= bytes_to_free {
            break;
        }
        out.remove.push(image.id.clone());
        out.freed = out.freed.saturating_add(image.size);
    }
    Ok(out)
}

/// When the collector first saw an image and last saw it in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRecord {
    pub first_detected: Timestamp,
    pub last_used: Option<Timestamp>,
}

/// Updates `records` from the runtime's images and the keys of the images
/// its containers use (the kubelet's `detectImages`): new images are first
/// detected at `detected` (long ago on the first detection), images in use
/// are used `now`, images gone are forgotten. Returns every image with
/// what [`plan`] needs.
pub fn detect(
    records: &mut HashMap<String, ImageRecord>,
    images: &[cri::Image],
    in_use: &HashSet<String>,
    detected: Timestamp,
    now: Timestamp,
) -> Vec<ImageInfo> {
    let mut out = Vec::with_capacity(images.len());
    let mut present = HashSet::new();
    for image in images {
        present.insert(image.id.as_str());
        let used = std::iter::once(&image.id)
            .chain(&image.repo_tags)
            .chain(&image.repo_digests)
            .any(|k| in_use.contains(k));
        let record = records.entry(image.id.clone()).or_insert(ImageRecord {
            first_detected: detected,
            last_used: None,
        });
        if used {
            record.last_used = Some(now);
        }
        out.push(ImageInfo {
            id: image.id.clone(),
            size: image.size,
            first_detected: record.first_detected,
            last_used: record.last_used,
            in_use: used,
            pinned: image.pinned,
        });
    }
    records.retain(|id, _| present.contains(id.as_str()));
    out
}

/// The keys by which containers name their images: image ids and refs, and
/// the image names they were created with.
pub fn images_in_use(containers: &[cri::Container]) -> HashSet<String> {
    containers
        .iter()
        .flat_map(|c| {
            [
                c.image_id.clone(),
                c.image_ref.clone(),
                c.image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
            ]
        })
        .filter(|k| !k.is_empty())
        .collect()
}

/// Capacity and availability of the file system holding a path (a narrow
/// seam so tests can pose as a full disk).
pub trait FilesystemStats: Send + Sync {
    fn usage(&self, path: &Path) -> std::io::Result<FsUsage>;
}

/// [`FilesystemStats`] from `statvfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Statvfs;

impl FilesystemStats for Statvfs {
    fn usage(&self, path: &Path) -> std::io::Result<FsUsage> {
        let (capacity, available) = crate::machine::fs_usage(path)?;
        Ok(FsUsage {
            capacity,
            available,
        })
    }
}

/// The outcome of one collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub plan: GcPlan,
    /// Images removed.
    pub removed: Vec<String>,
    /// Bytes freed (the removed images' sizes).
    pub freed: u64,
}

/// Collects the runtime's images; see the module docs.
pub struct ImageGcManager {
    runtime: Arc<dyn ContainerRuntime>,
    policy: ImageGcPolicy,
    fs: Arc<dyn FilesystemStats>,
    records: HashMap<String, ImageRecord>,
    initialized: bool,
    events: Option<(Recorder, String)>,
}

impl ImageGcManager {
    /// A collector measuring the image file system with `statvfs`.
    pub fn new(runtime: Arc<dyn ContainerRuntime>, policy: ImageGcPolicy) -> Self {
        Self::with_fs_stats(runtime, policy, Arc::new(Statvfs))
    }

    pub fn with_fs_stats(
        runtime: Arc<dyn ContainerRuntime>,
        policy: ImageGcPolicy,
        fs: Arc<dyn FilesystemStats>,
    ) -> Self {
        ImageGcManager {
            runtime,
            policy,
            fs,
            records: HashMap::new(),
            initialized: false,
            events: None,
        }
    }

    /// Failed collections are also Warning events on the Node `node`.
    pub fn with_events(mut self, recorder: Recorder, node: String) -> Self {
        self.events = Some((recorder, node));
        self
    }

    /// Collects every `period`, forever (the first time after one period,
    /// as the kubelet); a runtime without an image file system only gets
    /// its images' use tracked.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.policy.period.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        if let Err(e) = self.detect_images().await {
            tracing::warn!(error = %e, "detecting images for garbage collection");
        }
        loop {
            tick.tick().await;
            match self.garbage_collect().await {
                Ok(o) if !o.removed.is_empty() => {
                    tracing::info!(
                        removed = o.removed.len(),
                        freed = o.freed,
                        "image garbage collection"
                    )
                }
                Ok(_) => {}
                Err(GcError::Runtime(skiff_runtime::Error::Unsupported(what))) => {
                    tracing::warn!(
                        verb = what,
                        "image garbage collection off: the container runtime cannot report its image filesystem"
                    );
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "image garbage collection failed");
                    if let Some((recorder, node)) = &self.events {
                        let reason = match e {
                            GcError::InvalidCapacity => "InvalidDiskCapacity",
                            _ => "FreeDiskSpaceFailed",
                        };
                        recorder.warning(Subject::node(node), reason, e.to_string());
                    }
                }
            }
        }
    }

    /// Refreshes what is known of the runtime's images and their use.
    pub async fn detect_images(&mut self) -> Result<Vec<ImageInfo>, GcError> {
        let images = self.runtime.list_images(None).await?;
        let containers = self.runtime.list_containers(None).await?;
        let now = Timestamp::now();
        let detected = if self.initialized {
            now
        } else {
            Timestamp::UNIX_EPOCH
        };
        let infos = detect(
            &mut self.records,
            &images,
            &images_in_use(&containers),
            detected,
            now,
        );
        self.initialized = true;
        Ok(infos)
    }

    /// One collection: measure, plan, remove.
    pub async fn garbage_collect(&mut self) -> Result<GcOutcome, GcError> {
        let info = self.runtime.image_fs_info().await?;
        let mountpoint = info
            .image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.clone())
            .filter(|m| !m.is_empty())
            .ok_or(GcError::NoImageFilesystem)?;
        let fs = self.fs.clone();
        let path = mountpoint.clone();
        let usage = tokio::task::spawn_blocking(move || fs.usage(Path::new(&path)))
            .await
            .map_err(|e| GcError::Stat {
                path: mountpoint.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| GcError::Stat {
                path: mountpoint.clone(),
                source,
            })?;
        let images = self.detect_images().await?;
        let plan = plan(&self.policy, usage, &images, Timestamp::now())?;
        if plan.bytes_to_free == 0 {
            return Ok(GcOutcome {
                plan,
                ..Default::default()
            });
        }
        tracing::info!(
            usage = plan.usage_percent,
            high = self.policy.high_threshold_percent,
            low = self.policy.low_threshold_percent,
            bytes_to_free = plan.bytes_to_free,
            "disk usage on the image filesystem is over the high threshold, trying to free bytes down to the low threshold"
        );
        let sizes: HashMap<&str, u64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
        let mut outcome = GcOutcome {
            plan: plan.clone(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        for id in &plan.remove {
            let spec = cri::ImageSpec {
                image: id.clone(),
                ..Default::default()
            };
            match self.runtime.remove_image(spec).await {
                Ok(()) => {
                    tracing::info!(image = %id, "removed unused image");
                    self.records.remove(id);
                    outcome.freed += sizes.get(id.as_str()).copied().unwrap_or(0);
                    outcome.removed.push(id.clone());
                }
                Err(e) => errors.push(format!("{id}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(GcError::Removal {
                wanted: plan.bytes_to_free,
                freed: outcome.freed,
                errors: errors.join("; "),
            });
        }
        if outcome.freed < plan.bytes_to_free {
            return Err(GcError::NotEnough {
                wanted: plan.bytes_to_free,
                freed: outcome.freed,
            });
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn image(id: &str, size: u64, detected: &str, used: Option<&str>) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            size,
            first_detected: ts(detected),
            last_used: used.map(ts),
            in_use: false,
            pinned: false,
        }
    }

    #[test]
    fn gc_plans_free_down_to_the_low_threshold_least_recently_used_first() {
        let policy = ImageGcPolicy::default();
        let now = ts("2024-01-01T12:00:00Z");
        let old = "2024-01-01T00:00:00Z";
        let disk = |used_percent: u64| FsUsage {
            capacity: 100 * MIB,
            available: (100 - used_percent) * MIB,
        };
        struct Case {
            name: &'static str,
            fs: FsUsage,
            images: Vec<ImageInfo>,
            want: Vec<&'static str>,
            bytes_to_free: u64,
        }
        let cases = [
            Case {
                name: "below the high threshold nothing goes",
                fs: disk(84),
                images: vec![image("a", 50 * MIB, old, None)],
                want: vec![],
                bytes_to_free: 0,
            },
            Case {
                name: "at the high threshold down to the low one",
                fs: disk(85),
                images: vec![
                    image("recent", 3 * MIB, old, Some("2024-01-01T11:00:00Z")),
                    image("older", 3 * MIB, old, Some("2024-01-01T10:00:00Z")),
                    image("oldest", MIB, old, Some("2024-01-01T09:00:00Z")),
                ],
                want: vec!["oldest", "older", "recent"],
                bytes_to_free: 5 * MIB,
            },
            Case {
                name: "never used goes before used, earlier detected first",
                fs: disk(90),
                images: vec![
                    image("used", 20 * MIB, old, Some("2024-01-01T01:00:00Z")),
                    image("late", 4 * MIB, "2024-01-01T06:00:00Z", None),
                    image("early", 4 * MIB, "2024-01-01T05:00:00Z", None),
                ],
                want: vec!["early", "late", "used"],
                bytes_to_free: 10 * MIB,
            },
            Case {
                name: "stops once enough is freed",
                fs: disk(90),
                images: vec![
                    image("big", 30 * MIB, old, Some("2024-01-01T01:00:00Z")),
                    image("next", 30 * MIB, old, Some("2024-01-01T02:00:00Z")),
                ],
                want: vec!["big"],
                bytes_to_free: 10 * MIB,
            },
            Case {
                name: "in use, pinned and young images stay",
                fs: disk(99),
                images: vec![
                    ImageInfo {
                        in_use: true,
                        ..image("running", 10 * MIB, old, Some("2024-01-01T12:00:00Z"))
                    },
                    ImageInfo {
                        pinned: true,
                        ..image("pinned", 10 * MIB, old, None)
                    },
                    image("fresh", 10 * MIB, "2024-01-01T11:59:00Z", None),
                    image("aged", 10 * MIB, "2024-01-01T11:58:00Z", None),
                ],
                want: vec!["aged"],
                bytes_to_free: 19 * MIB,
            },
            Case {
                name: "availability above capacity counts as empty",
                fs: FsUsage {
                    capacity: 100 * MIB,
                    available: 200 * MIB,
                },
                images: vec![image("a", MIB, old, None)],
                want: vec![],
                bytes_to_free: 0,
            },
        ];
        for c in cases {
            let got = plan(&policy, c.fs, &c.images, now).expect("plan");
            assert_eq!(got.remove, c.want, "{}", c.name);
            assert_eq!(got.bytes_to_free, c.bytes_to_free, "{}", c.name);
        }
    }

    #[test]
    fn a_plan_without_enough_eligible_images_reports_the_shortfall() {
        let now = ts("2024-01-01T12:00:00Z");
        let fs = FsUsage {
            capacity: 100 * MIB,
            available: 5 * MIB,
        };
        let got = plan(
            &ImageGcPolicy::default(),
            fs,
            &[image("small", 2 * MIB, "2024-01-01T00:00:00Z", None)],
            now,
        )
        .expect("plan");
        assert_eq!(got.usage_percent, 95);
        assert_eq!((got.bytes_to_free, got.freed), (15 * MIB, 2 * MIB));
        assert_eq!(got.shortfall(), 13 * MIB);
        assert!(matches!(
            plan(
                &ImageGcPolicy::default(),
                FsUsage {
                    capacity: 0,
                    available: 0
                },
                &[],
                now
            ),
            Err(GcError::InvalidCapacity)
        ));
    }

    #[test]
    fn detection_remembers_first_sight_and_last_use() {
        let mut records = HashMap::new();
        let img = |id: &str, tag: &str| cri::Image {
            id: id.into(),
            repo_tags: vec![tag.into()],
            size: 7,
            ..Default::default()
        };
        let (t0, t1, t2) = (
            ts("2024-01-01T00:00:00Z"),
            ts("2024-01-01T01:00:00Z"),
            ts("2024-01-01T02:00:00Z"),
        );
        let in_use: HashSet<String> = ["example.com/a:1".to_string()].into();
        let first = detect(
            &mut records,
            &[img("a", "example.com/a:1")],
            &in_use,
            Timestamp::UNIX_EPOCH,
            t0,
        );
        assert_eq!(first[0].first_detected, Timestamp::UNIX_EPOCH);
        assert_eq!((first[0].last_used, first[0].in_use), (Some(t0), true));
        let images = [img("a", "example.com/a:1"), img("b", "example.com/b:1")];
        let second = detect(&mut records, &images, &HashSet::new(), t1, t1);
        assert_eq!((second[0].last_used, second[0].in_use), (Some(t0), false));
        assert_eq!((second[1].first_detected, second[1].last_used), (t1, None));
        detect(
            &mut records,
            &[img("b", "example.com/b:1")],
            &HashSet::new(),
            t2,
            t2,
        );
        assert!(!records.contains_key("a"));
        assert_eq!(records["b"].first_detected, t1);
    }

    #[test]
    fn policies_are_validated_as_the_kubelet_does() {
        assert!(ImageGcPolicy::default().validate().is_ok());
        let cases = [(101, 80), (85, 101), (80, 80), (80, 85)];
        for (high, low) in cases {
            let p = ImageGcPolicy {
                high_threshold_percent: high,
                low_threshold_percent: low,
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{high}/{low}");
        }
        let off = ImageGcPolicy {
            high_threshold_percent: 100,
            ..Default::default()
        };
        assert!(off.validate().is_ok() && !off.enabled());
    }
}
