# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

function Format-ImagingArgument {
    # One robocopy argument in double quotes. Paths were validated by imaging.quoting.check_windows_path
    # (plain segments, no quotes); a trailing backslash would escape the closing quote, so it gets a '.'.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if ($Path.EndsWith('\')) { $Path = $Path + '.' }
    return '"' + $Path + '"'
}

$ImagingAction = 'stage_artifact'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # The host pulls the image from the share itself: never through this remoting session, which runs at
    # a few MB/s. The copy runs as SYSTEM in a one-shot scheduled task, so the share is read with the host's
    # computer account (a remoting session has no credential to pass on to the share, the "double hop").
    # The copy lands in a staging folder, is verified by sha256, made read-only and only then renamed into
    # place: a file at dest_path is always complete and verified.
    $Name = 'apps-2026C3.0'
    $Sha256 = '9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b'
    $SharePath = '\\isis-images\imaging$\artifacts\apps-2026C3.0.vhdx'
    $DestPath = 'D:\Imaging\images\apps-2026C3.0-9b8a7c6d5e4f.vhdx'
    $Result['dest_path'] = $DestPath
    $Marker = $DestPath + '.verified'
    if (Test-Path -LiteralPath $DestPath -PathType Leaf) {
        # The integrity marker (the sha256 with the size and time the file had when it was hashed) spares a
        # full hash of an unchanged file; a file whose size or time moved is hashed again.
        $item = Get-Item -LiteralPath $DestPath
        $actual = $null
        if (Test-Path -LiteralPath $Marker -PathType Leaf) {
            $mark = Get-Content -LiteralPath $Marker -Raw | ConvertFrom-Json
            if ($mark.sha256 -eq $Sha256 -and [long]$mark.length -eq $item.Length -and [long]$mark.ticks -eq $item.LastWriteTimeUtc.Ticks) { $actual = $Sha256 }
        }
        if ($null -eq $actual) { $actual = Get-ImagingSha256 -Path $DestPath }
        if ($actual -ne $Sha256) {
            throw "$DestPath exists but its sha256 is $actual, not $Sha256; it may be the parent of instrument disks, so it is not replaced: inspect it and remove it by hand"
        }
        if (-not $item.IsReadOnly) {
            $item.IsReadOnly = $true
            $Result['changed'] = $true
        }
        $Result['how'] = 'already staged'
    }
    else {
        $destDir = Split-Path -Path $DestPath -Parent
        Initialize-ImagingFolder -Path $destDir
        $staging = Join-Path -Path $destDir -ChildPath ('.staging-' + $Sha256.Substring(0, 12))
        Initialize-ImagingFolder -Path $staging
        $sourceDir = Split-Path -Path $SharePath -Parent
        $sourceFile = Split-Path -Path $SharePath -Leaf
        $argLine = (Format-ImagingArgument -Path $sourceDir) + ' ' + (Format-ImagingArgument -Path $staging) + ' ' +
            (Format-ImagingArgument -Path $sourceFile) + ' /J /R:3 /W:10 /NP /NJH /NJS'
        $taskPath = '\imaging\'
        $taskName = 'stage-' + $Sha256.Substring(0, 12)
        $action = New-ScheduledTaskAction -Execute (Join-Path -Path $env:SystemRoot -ChildPath 'System32\robocopy.exe') -Argument $argLine
        $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
        $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (New-TimeSpan -Hours 6)
        Register-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Action $action -Principal $principal -Settings $settings -Force | Out-Null
        try {
            Start-ScheduledTask -TaskName $taskName -TaskPath $taskPath
            # 267009: the task is running; 267011: it has not run yet.
            do {
                Start-Sleep -Seconds 5
                $state = [string](Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath).State
                $code = (Get-ScheduledTaskInfo -TaskName $taskName -TaskPath $taskPath).LastTaskResult
            } while ($state -eq 'Running' -or $state -eq 'Queued' -or $code -eq 267009 -or $code -eq 267011)
        }
        finally {
            Unregister-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Confirm:$false -ErrorAction SilentlyContinue
        }
        # robocopy: 0-7 mean success (1 = copied), 8 and above mean failure.
        if ($code -ge 8) {
            throw "copying $SharePath failed (robocopy exit code $code); check that the computer account $env:COMPUTERNAME$ can read the share"
        }
        $copied = Join-Path -Path $staging -ChildPath $sourceFile
        if (-not (Test-Path -LiteralPath $copied -PathType Leaf)) { throw "robocopy reported success but $copied is missing" }
        $actual = Get-ImagingSha256 -Path $copied
        if ($actual -ne $Sha256) {
            Remove-Item -LiteralPath $copied -Force
            throw "the copy of $SharePath has sha256 $actual, not $Sha256: the share holds a different or damaged file"
        }
        (Get-Item -LiteralPath $copied).IsReadOnly = $true
        Move-Item -LiteralPath $copied -Destination $DestPath
        [System.IO.Directory]::Delete($staging, $false)
        $Result['changed'] = $true
        $Result['how'] = 'pulled from share'
    }
    $item = Get-Item -LiteralPath $DestPath
    $mark = [ordered]@{ sha256 = $Sha256; length = $item.Length; ticks = $item.LastWriteTimeUtc.Ticks }
    Set-Content -LiteralPath $Marker -Value (ConvertTo-Json -InputObject $mark) -Encoding UTF8
    $Result['sha256'] = $Sha256
    $Result['bytes'] = $item.Length
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
