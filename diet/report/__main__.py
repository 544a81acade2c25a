from diet.report import main

main()
