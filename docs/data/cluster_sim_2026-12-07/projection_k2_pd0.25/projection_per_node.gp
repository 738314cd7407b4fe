set terminal pngcairo size 800,500
set datafile separator ','
set grid
set key top right
set logscale x 2
set xlabel 'nodes of 8 h200'
set output 'docs/data/cluster_sim_2026-12-07/projection_k2_pd0.25/projection_per_node.png'
set ylabel 'output tokens/s per node'
set yrange [0:*]
plot '< grep "^[0-9]*,16," docs/data/cluster_sim_2026-12-07/projection_k2_pd0.25/projection.csv' using 1:8 with linespoints title '16 GPUs per group', '< grep "^[0-9]*,32," docs/data/cluster_sim_2026-12-07/projection_k2_pd0.25/projection.csv' using 1:8 with linespoints title '32 GPUs per group'
