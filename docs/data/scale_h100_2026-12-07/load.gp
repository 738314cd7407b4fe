set terminal pngcairo size 800,500
set output '/work/main/docs/data/scale_h100_2026-12-07/load.png'
set datafile separator ','
set logscale x 2
set xlabel 'requests in flight (closed loop, one H100 worker, V2-Lite shapes)'
set ylabel 'output tokens/s'
set y2label 'TPOT p50 / TTFT p50 (ms)'
set ytics nomirror
set y2tics
set key top left
plot '/work/main/docs/data/scale_h100_2026-12-07/scale.csv' every ::1 using 3:12 with linespoints title 'output tok/s',      '' every ::1 using 3:17 axes x1y2 with linespoints title 'TPOT p50 ms',      '' every ::1 using 3:15 axes x1y2 with linespoints title 'TTFT p50 ms'
