module gocompat

go 1.19
