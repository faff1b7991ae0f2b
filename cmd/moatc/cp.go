package main

import "github.com/urfave/cli/v2"

func cpCommand() *cli.Command {
	return &cli.Command{Name: "cp", Hidden: true}
}
