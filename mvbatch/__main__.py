from mvbatch.cli import main

main()
