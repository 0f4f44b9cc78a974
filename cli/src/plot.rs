//! Bus bandwidth against message size, one line per path, as an SVG file
//! (the way nccl-tests users read results). SVG only: no fonts or bitmap
//! libraries, so the CLI stays easy to build anywhere.

use plotters::prelude::*;

/// Draws `series` (name, (bytes, Gbit/s) points) into `file`; the first
/// series is the reference, drawn dashed-free in black.
pub fn bus_bandwidth(
    file: &str,
    title: &str,
    series: &[(&str, Vec<(u64, f64)>)],
) -> Result<(), String> {
    let points: Vec<(u64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let (Some(lo), Some(hi)) = (
        points.iter().map(|p| p.0).min(),
        points.iter().map(|p| p.0).max(),
    ) else {
        return Err("nothing to plot".into());
    };
    let top = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(file, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(
                ((lo as f64).max(1.0)..(hi as f64 * 1.5).max(2.0)).log_scale(),
                0.0..top,
            )?;
        chart
            .configure_mesh()
            .x_desc("message size (bytes)")
            .y_desc("bus bandwidth (Gbit/s)")
            .x_label_formatter(&|b| human(*b))
            .draw()?;
        let colors = [BLACK, BLUE, RED, GREEN, MAGENTA, CYAN];
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let line: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(b, g)| (b as f64, g))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{file}: {e}"))
}

fn human(bytes: f64) -> String {
    let b = bytes.round() as u64;
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 => format!("{}M", b >> 20),
        b if b >= 1 << 10 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_valid_svg_with_every_series() {
        let file = std::env::temp_dir().join(format!("airamp-plot-{}.svg", std::process::id()));
        let file = file.to_string_lossy().into_owned();
        let series = [
            (
                "raw ring (reference)",
                vec![(4096, 1.0), (1 << 20, 8.0), (1 << 26, 9.5)],
            ),
            (
                "compressed collnet",
                vec![(4096, 0.5), (1 << 20, 9.0), (1 << 26, 16.0)],
            ),
        ];
        bus_bandwidth(&file, "test", &series).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for name in [
            "raw ring (reference)",
            "compressed collnet",
            "bus bandwidth",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert!(svg.matches("<polyline").count() >= 2, "no lines drawn");
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(bus_bandwidth("/nonexistent/x.svg", "t", &[]).is_err());
    }
}
