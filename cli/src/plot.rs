//! Bus bandwidth against message size, one line per path, as an SVG file
//! (the way nccl-tests users read results). SVG only: no fonts or bitmap
//! libraries, so the CLI stays easy to build anywhere.

use plotters::prelude::*;

/// One line of a chart: its legend and (bytes, Gbit/s) points.
pub type Series = (String, Vec<(u64, f64)>);

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

/// The series in a results file, named after `label`:
/// * the JSON the PyTorch benchmarks in `examples/pytorch/` write
///   (`{"results": [{"bytes": N, "busbw_GBps": X}, ...]}`; rows with a
///   `dtype` other than the first one's are skipped): one series, GB/s
///   turned into Gbit/s;
/// * `airamp bench collnet --json`: one series per path (`label raw`,
///   `label exact`, `label compressed`);
/// * CSV lines `bytes,gbit_per_s` (`#` comments and a header allowed).
pub fn series_from_file(label: &str, file: &str) -> Result<Vec<Series>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let bad = |why: &str| format!("{file}: {why}");
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        if let Some(rows) = v["results"].as_array() {
            let dtype = rows.first().and_then(|r| r["dtype"].as_str());
            let pts = rows
                .iter()
                .filter(|r| r["dtype"].as_str() == dtype)
                .map(|r| match (r["bytes"].as_u64(), r["busbw_GBps"].as_f64()) {
                    (Some(b), Some(g)) => Ok((b, g * 8.0)),
                    _ => Err(bad("a result without bytes and busbw_GBps")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(vec![(label.to_string(), pts)]);
        }
        if let Some(sizes) = v["sizes"].as_array() {
            return ["raw", "exact", "compressed"]
                .iter()
                .map(|path| {
                    let pts = sizes
                        .iter()
                        .map(|r| {
                            match (r["bytes"].as_u64(), r["busbw_gbit_per_s"][path].as_f64()) {
                                (Some(b), Some(g)) => Ok((b, g)),
                                _ => Err(bad("a size without bytes and busbw_gbit_per_s")),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((format!("{label} {path}"), pts))
                })
                .collect();
        }
        return Err(bad(
            "neither a PyTorch benchmark's results nor bench collnet --json",
        ));
    }
    let mut pts = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (b, g) = line
            .split_once(',')
            .ok_or_else(|| bad(&format!("not bytes,gbit_per_s: {line:?}")))?;
        match (b.trim().parse::<u64>(), g.trim().parse::<f64>()) {
            (Ok(b), Ok(g)) => pts.push((b, g)),
            // A header line.
            _ if pts.is_empty() => {}
            _ => return Err(bad(&format!("not bytes,gbit_per_s: {line:?}"))),
        }
    }
    if pts.is_empty() {
        return Err(bad("no points"));
    }
    Ok(vec![(label.to_string(), pts)])
}

/// `LABEL=FILE` as given on the command line.
pub fn labelled(spec: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((l, f)) if !l.is_empty() && !f.is_empty() => Ok((l.to_string(), f.to_string())),
        _ => Err(format!("{spec:?}: expected LABEL=FILE")),
    }
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
    fn results_files_of_every_kind() {
        let dir = std::env::temp_dir().join(format!("airamp-plot-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let torch = put(
            "socket.json",
            r#"{"world": 2, "results": [{"dtype": "float32", "bytes": 1024, "busbw_GBps": 0.5},
               {"dtype": "float32", "bytes": 4096, "busbw_GBps": 1.0},
               {"dtype": "bfloat16", "bytes": 4096, "busbw_GBps": 9.0}]}"#,
        );
        let s = series_from_file("NCCL Socket", &torch).unwrap();
        assert_eq!(
            s,
            vec![("NCCL Socket".to_string(), vec![(1024, 4.0), (4096, 8.0)])]
        );
        let cn = put(
            "cn.json",
            r#"{"bench": "collnet", "sizes": [{"bytes": 4096,
               "busbw_gbit_per_s": {"raw": 1.0, "exact": 0.5, "compressed": 2.0}}]}"#,
        );
        let s = series_from_file("run", &cn).unwrap();
        let names: Vec<_> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["run raw", "run exact", "run compressed"]);
        assert_eq!(s[2].1, vec![(4096, 2.0)]);
        let csv = put(
            "x.csv",
            "# nccl-tests\nbytes,gbit_per_s\n1024, 1.5\n2048,3\n",
        );
        assert_eq!(
            series_from_file("csv", &csv).unwrap()[0].1,
            vec![(1024, 1.5), (2048, 3.0)]
        );
        let broken = put("bad.csv", "1024,1\nnot a number,2\n");
        assert!(series_from_file("x", &broken)
            .unwrap_err()
            .contains("not bytes,gbit_per_s"));
        assert!(series_from_file("x", &put("e.json", "{}")).is_err());
        assert!(labelled("a=b").is_ok() && labelled("=b").is_err() && labelled("ab").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(bus_bandwidth("/nonexistent/x.svg", "t", &[]).is_err());
    }
}
