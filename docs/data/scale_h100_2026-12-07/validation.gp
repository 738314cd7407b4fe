set terminal pngcairo size 700,600
set output '/work/main/docs/data/scale_h100_2026-12-07/validation.png'
set datafile separator ','
set key top left
set grid
set logscale xy
set xlabel 'measured output tokens/s'
set ylabel 'predicted output tokens/s'
plot '/work/main/docs/data/scale_h100_2026-12-07/validation.csv' every ::1 using 5:6 with points pt 7 title 'configurations', x with lines dt 2 title 'exact', 1.15*x with lines dt 3 title '+15%', 0.85*x with lines dt 3 title '-15%'
