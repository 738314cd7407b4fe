# Served (//:serve, one CUDA worker, HTTP, closed loop, prompt 16 / output 256) against
# the model alone (decode_bench, same run) on nvidia-h100-x1, 2026-12-06; V2-Lite shapes,
# random bf16 weights. Numbers from deploy/gpu_serving_bench.sh (docs/perf.md).
#   gnuplot docs/data/session_2026-12-06/served_vs_model.gp
set terminal pngcairo noenhanced size 1400,560
set output 'docs/serving_h100.png'
# concurrency, served out tok/s, decode_bench tok/s (context 256), decode_bench (1024), roofline (256),
# TPOT p50, TPOT p99, decode_bench step ms (256), TTFT p50, TTFT p99
$d << EOD
1 183.82 177.4 167.9 605.6 5.42 5.43 5.638 10.02 10.23
16 1257.92 1259.6 1211.6 1908.7 12.62 12.69 12.702 37.34 46.86
64 4064.37 4113.3 3850.8 6110.7 15.51 15.65 15.559 53.26 102.09
256 14613.83 14743.0 12424.9 23270.4 17.13 17.37 17.364 110.10 183.45
EOD
set multiplot layout 1,2 title 'DeepSeek-V2-Lite shapes on one H100: served over HTTP vs the model alone (decode_bench), same run'
set logscale xy 2
set xtics ("1" 1, "16" 16, "64" 64, "256" 256)
set offsets graph 0.05, graph 0.05, 0, 0
set xlabel 'concurrency = decode batch'
set grid
set key top left
set ylabel 'output tokens/s'
plot $d using 1:2 with linespoints lw 2 pt 7 title 'served (HTTP, 16 in / 256 out)', \
     $d using 1:3 with linespoints lw 2 pt 5 dt 2 title 'decode_bench, context 256', \
     $d using 1:4 with linespoints lw 2 pt 5 dt 3 title 'decode_bench, context 1024', \
     $d using 1:5 with lines lw 1 lc rgb 'gray' title 'roofline (bytes / measured HBM), context 256'
set ylabel 'ms'
set logscale y 10
plot $d using 1:6 with linespoints lw 2 pt 7 title 'served TPOT p50', \
     $d using 1:7 with linespoints lw 2 pt 7 dt 2 title 'served TPOT p99', \
     $d using 1:8 with linespoints lw 2 pt 5 dt 3 title 'decode_bench step, context 256', \
     $d using 1:9 with linespoints lw 2 pt 9 title 'served TTFT p50', \
     $d using 1:10 with linespoints lw 2 pt 9 dt 2 title 'served TTFT p99'
unset multiplot
