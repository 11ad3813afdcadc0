from imagerec.cli import main

main()
