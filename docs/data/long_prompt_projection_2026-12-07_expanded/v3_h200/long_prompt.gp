set terminal pngcairo size 700,450
set output '/tmp/lp/v3_h200/long_prompt.png'
set datafile separator ','
set grid
set key bottom left
set logscale x 2
set yrange [0:*]
set xlabel 'GPUs in the group (h200)'
set ylabel 'TTFT (s)'
set title 'one 131072-token prompt'
plot '/tmp/lp/v3_h200/long_prompt.csv' every ::1 using 1:3 with linespoints title 'home replica alone', '/tmp/lp/v3_h200/long_prompt.csv' every ::1 using 1:4 with linespoints title 'context parallel'
