//! Rendering for the fuzz targets: miette's graphical handler, configured as the CLI's
//! `render` (unicode without colour, width 100).

use crate::harness::Render;

pub struct Miette;

fn render(d: &dyn miette::Diagnostic) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    let _ = handler.render_report(&mut out, d);
    out
}

impl Render for Miette {
    fn manifest(&self, d: &cascade_manifest::Diagnostics) {
        let _ = render(d);
    }
    fn lock(&self, e: &cascade_lock::LockError) {
        let _ = render(e);
    }
}
