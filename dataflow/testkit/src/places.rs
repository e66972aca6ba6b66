//! Where things are: the workspace, the shared test data, the built binaries.

use std::path::{Path, PathBuf};

use retail_common::record::{Fields, Reject, Sale};

/// The workspace's root folder (this crate is `dataflow/testkit` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the testkit lies two folders below the workspace root")
        .to_owned()
}

/// The shared test data: `RETAIL_DATA_DIR`, else `shared/data` beside the repository.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RETAIL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data"))
}

/// A file of the shared test data, which must exist.
pub fn data_file(name: &str) -> PathBuf {
    let path = data_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing; set RETAIL_DATA_DIR to the folder with the test data",
        path.display()
    );
    path
}

/// The folder cargo builds the workspace's binaries into, for the running test's profile: a
/// test executable is `target/<profile>/deps/<test>-<hash>`, the binaries are in
/// `target/<profile>`. (A test sees `CARGO_BIN_EXE_*` only of its own package's binaries.)
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let dir = exe.parent().expect("the test executable's folder");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("the profile's folder")
    } else {
        dir
    };
    dir.to_owned()
}

/// A binary of the workspace (`ingest`, `dataflow`, `cluster`), built with the running test's
/// profile; missing, the test fails saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first: cargo build --release --workspace",
        path.display()
    );
    path
}

/// Types one row of the UCI Online Retail layout (InvoiceNo, StockCode, Description,
/// Quantity, InvoiceDate, UnitPrice, CustomerID, Country; `field(i)` is the i-th) with the
/// shared record code, as `ingest` types it: the expectation a test computes from a data file.
pub fn sale_of_row<'a>(field: impl Fn(usize) -> &'a str) -> Result<Sale, Reject> {
    Sale::from_fields(&Fields {
        invoice_no: field(0),
        stock_code: field(1),
        description: field(2),
        quantity: field(3),
        invoice_date: field(4),
        unit_price: field(5),
        customer_id: field(6),
        country: field(7),
    })
}
