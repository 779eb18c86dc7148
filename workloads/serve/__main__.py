from neuraxis.workloads.serve.cli import main

main()
