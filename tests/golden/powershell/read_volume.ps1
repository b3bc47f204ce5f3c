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
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'read_volume'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Reads every file of a small volume (the Settings volume of a VM that is off), or only some of its
    # files (the record and the ledger on Var), mounted read-only; changes nothing. Hyper-V will not mount a
    # disk a running VM holds: read_guest_files reads those. Refuses more than max_bytes. A file larger
    # than hash_over (when given) is not sent back: only its sha256, under 'hashed' (a large calibration
    # blob is compared by hash). The provider holds the host's mount lock while this runs.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-settings-2026C3.0-1a2b3c4d.vhdx'
    $MaxBytes = [long]16777216
    # 'only': the relative paths (files or folders) to read, when not the whole volume
    $Only = @(@('imaging/record.json', 'imaging/hotfixes.json') | ForEach-Object { ([string]$_).Replace('/', '\').ToLowerInvariant() })
    $HashOver = [long]4194304
    $files = [ordered]@{}
    $hashed = [ordered]@{}
    $total = [long]0
    $mounted = Mount-ImagingVolume -Path $Path -ReadOnly
    try {
        $present = Get-ImagingVolumeFiles -Root $mounted.Folder
        foreach ($file in $present.Files) {
            $low = $file.Rel.ToLowerInvariant()
            if ($Only.Count -gt 0 -and @($Only | Where-Object { $low -eq $_ -or $low.StartsWith($_ + '\') }).Count -eq 0) { continue }
            if ($HashOver -gt 0 -and (Get-Item -LiteralPath $file.Full -Force).Length -gt $HashOver) {
                $hashed[$file.Rel.Replace('\', '/')] = (Get-FileHash -LiteralPath $file.Full -Algorithm SHA256).Hash.ToLowerInvariant()
                continue
            }
            $bytes = [System.IO.File]::ReadAllBytes($file.Full)
            $total += $bytes.Length
            if ($total -gt $MaxBytes) { throw "$Path holds more than $MaxBytes bytes; it is not a settings volume" }
            $files[$file.Rel.Replace('\', '/')] = [System.Convert]::ToBase64String($bytes)
        }
    }
    finally {
        Dismount-ImagingVolume -Mounted $mounted
    }
    $Result['files'] = $files
    $Result['hashed'] = $hashed
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
