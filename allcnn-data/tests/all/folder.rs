//! The image-folder reader on temporary trees; `info` and `open_dataset`.

use std::path::Path;

use allcnn_data::{
    folder::OnError, info::detect_format, info::info, info::DatasetFormat, open_dataset, DataError,
    Dataset, FolderOptions, ImageFolder, OpenOptions, Split,
};

fn png(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed, (x * 10) as u8, (y * 20) as u8])
    });
    img.save(path).unwrap();
}

/// root/{cat: 2 images + a text file, ant: 1 image in a sub-folder + 1, bee: 1}.
fn tree(root: &Path) {
    png(&root.join("cat/b.png"), 4, 3, 1);
    png(&root.join("cat/a.png"), 4, 3, 2);
    std::fs::write(root.join("cat/notes.txt"), "not an image").unwrap();
    png(&root.join("ant/sub/x.png"), 4, 3, 3);
    png(&root.join("ant/y.PNG"), 4, 3, 4);
    png(&root.join("bee/z.png"), 4, 3, 5);
    std::fs::create_dir_all(root.join(".hidden")).unwrap();
}

#[test]
fn classes_sorted_and_pixels_chw() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let f = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap();
    assert_eq!(f.class_names(), &["ant", "bee", "cat"]);
    assert_eq!(f.len(), 5);
    assert_eq!(f.class_counts(), vec![2, 1, 2]);
    let labels: Vec<u32> = (0..5).map(|i| f.label(i).unwrap()).collect();
    assert_eq!(labels, vec![0, 0, 1, 2, 2]);
    assert!(f.files()[3].0.ends_with("cat/a.png"));
    let s = f.get(3).unwrap();
    assert_eq!(
        (s.image.channels(), s.image.height(), s.image.width()),
        (3, 3, 4)
    );
    // R plane constant 2; G = 10 x; B = 20 y.
    assert_eq!(s.image.at(0, 2, 3), 2);
    assert_eq!(s.image.at(1, 2, 3), 30);
    assert_eq!(s.image.at(2, 2, 3), 40);
    assert_eq!(f.image_shape(), None, "lazy folder of unknown size");
    // Cached: same pixels, known shape.
    let c = ImageFolder::open(
        tmp.path(),
        FolderOptions {
            cache: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.get(3).unwrap(), s);
    assert_eq!(c.image_shape(), Some((3, 3, 4)));
}

#[test]
fn a_jpeg_cut_short_is_refused_not_filled_in() {
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 90]));
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let path = Path::new("cut.jpg");
    let whole = allcnn_data::folder::decode_image_bytes(&jpeg, path).unwrap();
    assert_eq!((whole.height(), whole.width()), (32, 32));
    let err =
        allcnn_data::folder::decode_image_bytes(&jpeg[..jpeg.len() * 7 / 10], path).unwrap_err();
    assert!(
        matches!(err, DataError::BadImage { .. })
            && err.to_string().contains("cut.jpg")
            && err.to_string().contains("truncated JPEG"),
        "{err}"
    );
}

#[test]
fn undecodable_image_fails_or_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    std::fs::write(tmp.path().join("cat/broken.jpg"), b"this is no jpeg").unwrap();
    // Not cached: every header is read at open time (D7 of issue 15), so the
    // error comes before any training, naming the file.
    let err = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::BadImage { .. }));
    assert!(err.to_string().contains("broken.jpg"), "{err}");
    // A file whose header reads but whose pixels do not: found by `get`.
    let half = tempfile::tempdir().unwrap();
    tree(half.path());
    let victim = half.path().join("cat/a.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let f = ImageFolder::open(half.path(), FolderOptions::default()).unwrap();
    let i = f
        .files()
        .iter()
        .position(|(p, _)| p.ends_with("a.png"))
        .unwrap();
    let err = f.get(i).unwrap_err();
    assert!(err.to_string().contains("a.png"), "{err}");
    // Cached: at open time.
    let err = ImageFolder::open(
        tmp.path(),
        FolderOptions {
            cache: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("broken.jpg"), "{err}");
    // Skip: left out and reported.
    for cache in [false, true] {
        let f = ImageFolder::open(
            tmp.path(),
            FolderOptions {
                on_error: OnError::Skip,
                cache,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f.skipped().len(), 1);
        assert!(f.skipped()[0].0.ends_with("broken.jpg"));
        assert!((0..5).all(|i| f.get(i).is_ok()));
    }
}

#[test]
fn empty_class_missing_dir_wrong_size() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    std::fs::create_dir_all(tmp.path().join("dog")).unwrap();
    std::fs::write(tmp.path().join("dog/readme.txt"), "x").unwrap();
    let err = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::EmptyClass { path } if path.ends_with("dog")),
        "{err:?}"
    );
    std::fs::remove_dir_all(tmp.path().join("dog")).unwrap();

    let err = ImageFolder::open(&tmp.path().join("nope"), FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }) && err.to_string().contains("nope"));

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        ImageFolder::open(empty.path(), FolderOptions::default()),
        Err(DataError::NoClasses { .. })
    ));

    png(&tmp.path().join("bee/big.png"), 8, 8, 9);
    let opts = FolderOptions {
        expect_size: Some((3, 4)),
        ..Default::default()
    };
    let err = ImageFolder::open(tmp.path(), opts.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongImageSize {
                found_h: 8,
                expected_h: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("big.png"));
    let f = ImageFolder::open(
        tmp.path(),
        FolderOptions {
            on_error: OnError::Skip,
            ..opts
        },
    )
    .unwrap();
    assert_eq!((f.len(), f.image_shape()), (5, Some((3, 3, 4))));

    // A class whose every image is skipped: said as such, with the count.
    std::fs::create_dir_all(tmp.path().join("eel")).unwrap();
    for name in ["a.jpg", "b.png"] {
        std::fs::write(tmp.path().join("eel").join(name), b"not an image").unwrap();
    }
    let err = ImageFolder::open(
        tmp.path(),
        FolderOptions {
            on_error: OnError::Skip,
            expect_size: Some((3, 4)),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, DataError::AllImagesSkipped { path, skipped: 2 } if path.ends_with("eel")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("all 2 images of this class were skipped"),
        "{err}"
    );
}

#[test]
fn info_and_open_on_split_folders() {
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("train"));
    png(&tmp.path().join("val/ant/1.png"), 4, 3, 1);
    png(&tmp.path().join("val/bee/1.png"), 4, 3, 1);
    let i = info(tmp.path()).unwrap();
    assert_eq!(i.format, DatasetFormat::ImageFolder);
    assert_eq!(i.splits.len(), 2);
    assert_eq!(
        (i.splits[0].name.as_str(), i.splits[0].images),
        ("train", 5)
    );
    assert_eq!((i.splits[1].name.as_str(), i.splits[1].images), ("val", 2));
    assert_eq!(i.splits[0].classes[2].name, "cat");
    let table = i.to_string();
    assert!(table.contains("train: 5 images, 3 classes"), "{table}");
    // val/ lacks cat: said, as training refuses it.
    assert_eq!(
        i.problems(),
        ["train has the classes [ant, bee, cat], val [ant, bee]: training refuses them, as the labels would not match"]
    );
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(json["format"], "image-folder");
    let test = open_dataset(tmp.path(), Split::Test, &OpenOptions::default()).unwrap();
    assert_eq!(test.len(), 2, "test falls back to val/");

    let err = detect_format(&tmp.path().join("train/cat/a.png")).unwrap_err();
    assert!(
        matches!(err, DataError::UnrecognisedLayout { .. }),
        "{err:?}"
    );
}

#[test]
fn split_folders_are_found_whatever_their_case() {
    // `Train/` and `TEST/` are splits, not two classes called so.
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("Train"));
    png(&tmp.path().join("TEST/ant/1.png"), 4, 3, 1);
    png(&tmp.path().join("TEST/bee/1.png"), 4, 3, 1);
    assert!(allcnn_data::folder::has_split_folders(tmp.path()));
    let train = open_dataset(tmp.path(), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!((train.len(), train.class_names().len()), (5, 3));
    let test = open_dataset(tmp.path(), Split::Test, &OpenOptions::default()).unwrap();
    assert_eq!(test.len(), 2);
    let i = info(tmp.path()).unwrap();
    assert_eq!(i.splits.len(), 2, "{i}");
}

#[test]
fn info_says_what_training_would_refuse() {
    // test/ with a class train/ lacks, and an empty class folder: both
    // said, with the counts in words.
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("train"));
    png(&tmp.path().join("test/ant/1.png"), 4, 3, 1);
    std::fs::create_dir_all(tmp.path().join("test/cat")).unwrap();
    png(&tmp.path().join("test/wasp/1.png"), 4, 3, 1);
    let i = info(tmp.path()).unwrap();
    let p = i.problems();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("test: no image in the class folder cat:"),
        "{}",
        p[0]
    );
    assert!(
        p[1].starts_with("train has the classes [ant, bee, cat], test [ant, cat, wasp]"),
        "{}",
        p[1]
    );
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("train/ant/1.png"), 4, 3, 1);
    let table = info(tmp.path()).unwrap().to_string();
    assert!(table.contains("train: 1 image, 1 class ("), "{table}");
}

#[test]
fn a_split_folder_the_tree_lacks_names_the_one_it_has() {
    // train/ only: the test split is missing, and the error says the
    // folder has train/ (not "expected a folder of class folders").
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("train"));
    let Err(err) = open_dataset(tmp.path(), Split::Test, &OpenOptions::default()) else {
        panic!("opened a test split that is not there")
    };
    let DataError::MissingFile { path, hint } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(path, &tmp.path().join("test"));
    assert!(
        hint.contains("has train/ but no test/ (nor val/): use the train split"),
        "{err}"
    );
    // val/ only: the test split falls back to it, and the training split
    // is the missing one.
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("val"));
    assert_eq!(
        open_dataset(tmp.path(), Split::Test, &OpenOptions::default())
            .unwrap()
            .len(),
        5
    );
    let Err(err) = open_dataset(tmp.path(), Split::Train, &OpenOptions::default()) else {
        panic!("opened a train split that is not there")
    };
    assert!(
        err.to_string()
            .contains("has test/ or val/ but no train/: use the test split"),
        "{err}"
    );
}

#[test]
fn info_on_cifar_binaries() {
    use allcnn_data::CifarKind;
    let tmp = tempfile::tempdir().unwrap();
    crate::util::write_cifar_dir(tmp.path(), CifarKind::Cifar100, 200);
    let i = info(tmp.path()).unwrap();
    assert_eq!(i.format, DatasetFormat::Cifar100Binary);
    assert_eq!(
        i.splits.iter().map(|s| s.images).collect::<Vec<_>>(),
        vec![200, 200]
    );
    assert_eq!(i.splits[0].classes.len(), 100);
    assert!(i.splits[0].classes.iter().all(|c| c.count == 2));
    let ds = open_dataset(tmp.path(), Split::Train, &OpenOptions::default()).unwrap();
    assert_eq!(ds.num_classes(), 100);
}

#[cfg(unix)]
#[test]
fn symlinks_are_followed_once_and_loops_refused() {
    use std::os::unix::fs::symlink;
    // D1 of issue 15: `ln -s .. cat/loop` relabelled every class as cat,
    // and two such links grew the listing without bound.
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    symlink("..", tmp.path().join("cat/loop")).unwrap();
    symlink("..", tmp.path().join("cat/loop2")).unwrap();
    let err = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::SymlinkLoop { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cat/loop") && msg.contains("a loop"), "{msg}");
    assert!(info(tmp.path()).is_err(), "data info refuses the loop too");

    // Two links to one outside folder, and a link to a sibling folder's
    // sub-folder: each directory is read once.
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let outside = tempfile::tempdir().unwrap();
    png(&outside.path().join("o.png"), 4, 3, 9);
    symlink(outside.path(), tmp.path().join("bee/link1")).unwrap();
    symlink(outside.path(), tmp.path().join("bee/link2")).unwrap();
    // Not a regular file: a link to a device is never read.
    symlink("/dev/zero", tmp.path().join("bee/zero.png")).unwrap();
    let f = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap();
    assert_eq!(f.class_counts(), vec![2, 2, 2]);

    // A link to nothing named like an image is a missing image: an error
    // naming the link and its target (it was left out silently), or, on
    // request, skipped and listed.
    symlink("/nonexistent.png", tmp.path().join("bee/dangling.png")).unwrap();
    let err = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::BadImage { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bee/dangling.png") && msg.contains("/nonexistent.png, which does not exist"),
        "{msg}"
    );
    for cache in [false, true] {
        let options = FolderOptions {
            on_error: OnError::Skip,
            cache,
            ..Default::default()
        };
        let f = ImageFolder::open(tmp.path(), options).unwrap();
        assert_eq!(f.class_counts(), vec![2, 2, 2]);
        assert_eq!(f.skipped().len(), 1);
        assert!(f.skipped()[0].0.ends_with("dangling.png"));
    }
}

#[test]
fn an_image_announcing_a_huge_size_is_refused_before_decoding() {
    // D15 of issue 15: a small PNG of 20000 x 20000 grey pixels took 2.8 GB.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train/cat/wide.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::new(9000, 2).save(&path).unwrap();
    let e = allcnn_data::folder::decode_image(&path).unwrap_err();
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
    assert!(e.to_string().contains("wide.png"), "{e}");
}

#[test]
fn loader_size_errors_name_the_file() {
    // D29: one image of another size in a folder without a fixed size; the
    // loader's error names that file, not "example N".
    use allcnn_data::{DataLoader, Subset};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("cat/a.png"), 4, 3, 1);
    png(&tmp.path().join("cat/b.png"), 4, 3, 2);
    png(&tmp.path().join("dog/odd.png"), 5, 3, 3);
    let f = ImageFolder::open(tmp.path(), FolderOptions::default()).unwrap();
    assert!(f.describe(2).ends_with("odd.png"), "{}", f.describe(2));
    let data: Arc<dyn Dataset> = Arc::new(f);
    let loader = DataLoader::builder(data.clone())
        .batch_size(3)
        .shuffle(false)
        .build()
        .unwrap();
    let err = loader.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(err.contains("odd.png"), "{err}");
    // Through a subset, the inner dataset's name of the example.
    let sub = Subset::new(data, vec![2, 0]).unwrap();
    assert!(sub.describe(0).ends_with("odd.png"), "{}", sub.describe(0));
}

#[test]
fn an_image_over_the_size_limit_says_its_size_the_limit_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.png");
    image::RgbImage::new(9000, 4).save(&path).unwrap();
    let e = allcnn_data::folder::decode_image(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("wide.png")
            && msg.contains("9000x4: over the limits on images (8192 pixels a side, 256 MiB decoded); scale it down first"),
        "{msg}"
    );
}
